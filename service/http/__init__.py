"""The HTTP surface around the routes: middleware (ids, metrics, API key, admission, body
limit), upload reading and the response schemas."""
