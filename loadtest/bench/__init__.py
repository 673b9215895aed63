"""Benchmarks: one question each (a figure in the README), printed and written as JSON."""
