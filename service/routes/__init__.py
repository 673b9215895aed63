"""Thin HTTP routers; the work happens in the pipeline."""
