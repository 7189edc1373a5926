"""Run bookkeeping: identity, run folder, checkpoints, atomic files, loggers."""
