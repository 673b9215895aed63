"""Vector index (FAISS) and durable item store (SQLite): no FastAPI imports."""
