"""Log set-up for every process: plain text or one JSON object per line, with request ids."""

import json
import logging
import time
import warnings
from contextvars import ContextVar
from typing import Literal

LogFormat = Literal["text", "json"]

# The request a line is written for (service.http.request_id sets it; the RPC carries it to
# the worker processes); "-" outside a request: start-up, batches, background work.
current_request_id: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request it was written for ("-" if none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": self._process_name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat, process_name: str = "main") -> None:
    """Root handler for this process; uvicorn's loggers propagate to it (log_config=None)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process_name))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s [{process_name}] %(name)s %(request_id)s: %(message)s"
            )
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it picked
    # A corrupt upload is answered 422; Pillow's complaints about it (truncated TIFF, bad
    # EXIF, its own ERROR lines) would be noise, and a log flood at an attacker's will.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    logging.getLogger("PIL").setLevel(logging.CRITICAL)
    logging.captureWarnings(True)  # any other warning: a log line with its request id
