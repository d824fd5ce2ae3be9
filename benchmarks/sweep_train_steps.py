"""Sweep group(s): train_steps (see benchmarks/sweep.py)."""
