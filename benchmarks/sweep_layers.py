"""Sweep group(s): layers (see benchmarks/sweep.py)."""
