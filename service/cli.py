"""The `resnet-serve` command."""

import argparse
import logging
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from service.settings import Settings

# flag -> Settings field; only the common ones, everything else is RESNET_SERVE_* in the env.
SERVE_FLAGS = {
    "--model": "model",
    "--weights": "weights",
    "--device": "device",
    "--host": "host",
    "--port": "port",
    "--data-dir": "data_dir",
    "--max-batch-size": "max_batch_size",
    "--max-wait-ms": "max_wait_ms",
    "--queue-size": "queue_size",
    "--request-timeout-s": "request_timeout_s",
    "--threads": "threads",
    "--log-level": "log_level",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    for flag, field in SERVE_FLAGS.items():
        info = Settings.model_fields[field]
        serve.add_argument(
            flag,
            dest=field,
            default=None,
            help=f"{info.description or field} (env RESNET_SERVE_{field.upper()})",
        )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, flags on top; pydantic validates and converts both."""
    overrides = {field: getattr(args, field) for field in SERVE_FLAGS.values()}
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        parser.error(f"invalid settings: {problems}")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from service.app import create_app  # torch import is slow; keep --help fast

    # Exits with status 3 when start-up fails (e.g. weights unavailable), after logging why.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
