"""The error a model that cannot load raises: here, apart from the loading code, so that the
processes that only report it (the worker launcher, commands) need not import torch."""


class ModelLoadError(RuntimeError):
    """The configured model or weights cannot be loaded; the message says what to do."""
