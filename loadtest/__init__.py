"""Benchmarks and load generators (scripts, not tests)."""
