"""python -m cli ...: the same as the `onboard` command (for environments without the script on PATH)."""

from cli.main import app

app()
