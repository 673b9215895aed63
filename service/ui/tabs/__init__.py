"""The web page's tabs, one module each: its components, its handlers and its wiring."""
