"""Model versions: several models loaded side by side, each with its own index, one live,
switched atomically (issue 23)."""
