"""Sweep group(s): callbacks (see benchmarks/sweep.py)."""
