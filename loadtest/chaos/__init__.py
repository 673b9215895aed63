"""Fault and abuse tests: kill -9 cycles, soak, fuzzed uploads."""
