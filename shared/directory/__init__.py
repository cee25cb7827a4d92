"""Directory access: Microsoft Graph and Exchange Online behind small interfaces (see ports.py)."""
