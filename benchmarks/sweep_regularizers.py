"""Sweep group(s): regularizers (see benchmarks/sweep.py)."""
