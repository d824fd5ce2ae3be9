"""Sweep group(s): losses (see benchmarks/sweep.py)."""
