"""Sweep group(s): optimizers (see benchmarks/sweep.py)."""
