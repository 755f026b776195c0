"""`python -m server --listen 0.0.0.0:8000` (the original's `python -m tools.api`)."""

from .cli import main

main()
