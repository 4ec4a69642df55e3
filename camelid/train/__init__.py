"""One training loop (loop.py) shared by every stage; each stage adds an objective and its data."""
