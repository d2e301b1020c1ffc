"""What every run shares, whatever its family: the run loop (rows, progress, callback,
checkpoints, summary; ``loop.py``) and the checkpoint files (``checkpoint.py``)."""
