"""Benchmarks: generated Books-shaped data, FLOP counts, and a side-by-side comparison."""
