"""Process topology: a supervisor, model workers, an index worker and HTTP workers."""
