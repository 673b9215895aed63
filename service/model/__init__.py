"""Model runtime: which weights, which preprocessing, which backend."""
