"""`python -m service.commands.healthcheck`: exit 0 if the local service answers /readyz with 200.

For container health checks; the slim image has no curl. Reads RESNET_SERVE_PORT like the
service does and imports nothing heavy, so it costs a few milliseconds.
"""

import os
import sys
import urllib.error
import urllib.request


def ready(port: int, timeout_s: float = 3) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=timeout_s) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):  # HTTPError (503 while loading) is a URLError
        return False


if __name__ == "__main__":
    sys.exit(0 if ready(int(os.environ.get("RESNET_SERVE_PORT", "8000"))) else 1)
