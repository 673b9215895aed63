"""Optional API key: required for index writes and model management (/v1/models), or for
everything but the health probes.

The key comes as `Authorization: Bearer <key>` or `X-API-Key: <key>` and is compared in
constant time. The web page at /ui has its own login (service.ui.app) and the API docs stay
open: neither holds data.
"""

import hmac
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Unauthorized, error_response

KeyScope = Literal["writes", "all"]
# Probes come from orchestrators that hold no key; docs and the page's own assets hold no data.
_OPEN_PREFIXES = ("/healthz", "/readyz", "/v2/health", "/docs", "/openapi.json", "/ui")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def requires_key(method: str, path: str, scope: KeyScope) -> bool:
    """Whether this request needs the key under `scope`."""
    if path.startswith(_OPEN_PREFIXES) or _is_model_probe(path):
        return False
    if scope == "all" or path.startswith("/v1/models"):  # management: even its listing
        return True
    return path.startswith(("/v1/items", "/v1/heads")) and method not in _READ_METHODS


def _is_model_probe(path: str) -> bool:
    """The inference protocol's model readiness, which orchestrators probe like /readyz."""
    return path.startswith("/v2/models/") and path.endswith("/ready")


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key a request carries, from either header; None when it carries none."""
    authorization = headers.get(b"authorization", b"")
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and credentials.strip():
        return credentials.strip()
    return headers.get(b"x-api-key")


class ApiKeyGuard:
    def __init__(self, app: ASGIApp, key: str, scope: KeyScope) -> None:
        self.app = app
        self._key = key.encode()
        self._scope = scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and requires_key(scope["method"], scope["path"], self._scope):
            presented = presented_key(dict(scope["headers"]))
            # compare_digest: the time taken does not tell how much of a guess was right.
            if presented is None or not hmac.compare_digest(presented, self._key):
                problem = "missing" if presented is None else "wrong"
                refusal = Unauthorized(
                    f"API key {problem}: send it as 'Authorization: Bearer <key>' or 'X-API-Key'"
                )
                await error_response(refusal, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)
