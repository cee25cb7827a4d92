"""The triggers (triggers.py); each function only hands its message to the runner or the dead-letter reporter."""
