"""Benchmarks of spasticity-cds; run ``scripts/bench`` (timings never live in the unit tests)."""
