"""The reference trainer, its history, checkpoints, finite checks and launch helpers."""
