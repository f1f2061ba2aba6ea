"""Scheduling a block's repeats across inputs: the scheduler, halting, deep supervision."""
