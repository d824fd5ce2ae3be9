"""Sweep group(s): initializers (see benchmarks/sweep.py)."""
