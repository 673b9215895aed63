"""Vector index and durable item store (filled in by the similarity-search issue)."""
