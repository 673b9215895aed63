"""Acceptance checks of a running service (the GPU check stays at loadtest.gpu_check: the
command a GPU machine runs first)."""
