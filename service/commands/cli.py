"""The `resnet-serve` command."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from service.logs import configure_logging
from service.settings import Settings

# flag -> Settings field; only the common ones, everything else is RESNET_SERVE_* in the env.
SERVE_FLAGS = {
    "--model": "model",
    "--weights": "weights",
    "--device": "device",
    "--backend": "backend",
    "--precision": "precision",
    "--host": "host",
    "--port": "port",
    "--data-dir": "data_dir",
    "--max-batch-size": "max_batch_size",
    "--max-wait-ms": "max_wait_ms",
    "--queue-size": "queue_size",
    "--request-timeout-s": "request_timeout_s",
    "--threads": "threads",
    "--workers": "workers",
    "--log-level": "log_level",
}


# The index commands need only these; they read the rest from the environment too.
INDEX_FLAGS = {
    flag: SERVE_FLAGS[flag] for flag in ("--model", "--weights", "--device", "--data-dir")
}
GATE_FLAGS = INDEX_FLAGS | {flag: SERVE_FLAGS[flag] for flag in ("--backend", "--precision")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_setting_flags(commands.add_parser("serve", help="run the HTTP service"), SERVE_FLAGS)
    _add_setting_flags(
        commands.add_parser("gate", help="accuracy gate and speed of each backend candidate"),
        GATE_FLAGS,
    )
    backends = commands.add_parser("backends", help="backend decisions made ahead of time")
    decide = backends.add_subparsers(dest="action", required=True).add_parser(
        "decide",
        help="decide the backend for this model and machine now, and write the decision and "
        "the converted model to DIR, to ship (RESNET_SERVE_BACKEND_DECISIONS=DIR)",
    )
    decide.add_argument("--out", type=Path, required=True, help="the directory to write")
    _add_setting_flags(decide, GATE_FLAGS | {"--max-batch-size": "max_batch_size"})
    index = commands.add_parser("index", help="bulk work on the similarity index (service stopped)")
    actions = index.add_subparsers(dest="action", required=True)
    add_folder = actions.add_parser(
        "add-folder", help="embed every image under DIR (ids = relative paths); resumable"
    )
    add_folder.add_argument("folder", type=Path)
    add_folder.add_argument("--no-progress", action="store_true", help="no progress bar")
    reindex = actions.add_parser("reindex", help="re-embed stored images with the current model")
    reindex.add_argument("--no-progress", action="store_true", help="no progress bar")
    import_vectors = actions.add_parser(
        "import-vectors",
        help="add embeddings computed elsewhere from a Parquet file (id, vector, metadata); "
        "resumable",
    )
    import_vectors.add_argument("file", type=Path, help="Parquet: id, vector[, metadata]")
    import_vectors.add_argument(
        "--fingerprint",
        required=True,
        help="the model fingerprint the vectors were made with (GET /v1/index reports the "
        "index's); anything else is refused",
    )
    import_vectors.add_argument("--no-progress", action="store_true", help="no progress bar")
    actions.add_parser("rebuild", help="rebuild the FAISS index from the item store")
    finetune = commands.add_parser(
        "finetune", help="train on a folder of your photos (a subfolder per class)"
    )
    actions.add_parser("stats", help="print index statistics as JSON")
    for action in (
        add_folder,
        import_vectors,
        reindex,
        actions.choices["rebuild"],
        actions.choices["stats"],
    ):
        _add_setting_flags(action, INDEX_FLAGS)
    from service.finetune.arguments import add_arguments

    add_arguments(finetune)
    _add_setting_flags(finetune, GATE_FLAGS)
    from service.commands.models_command import add_arguments as add_models_arguments

    add_models_arguments(
        commands.add_parser("models", help="model versions of a running service (its HTTP API)")
    )
    return parser


def _add_setting_flags(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    for flag, field in flags.items():
        info = Settings.model_fields[field]
        parser.add_argument(
            flag,
            dest=field,
            default=None,
            help=f"{info.description or field} (env RESNET_SERVE_{field.upper()})",
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, flags on top; pydantic validates and converts both."""
    overrides = {field: getattr(args, field, None) for field in SERVE_FLAGS.values()}
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "models":
        from service.commands.models_command import run_models_command

        raise SystemExit(run_models_command(args))
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        parser.error(f"invalid settings: {problems}")
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "gate":
        from service.commands.gate_command import run_gate_command  # torch import is slow

        raise SystemExit(run_gate_command(settings))
    if args.command == "backends":
        from service.commands.backends_command import run_decide_command  # torch is slow

        raise SystemExit(run_decide_command(settings, args.out))
    if args.command == "finetune":
        from service.finetune.command import run_finetune  # torch import is slow

        command = ["resnet-serve", *(sys.argv[1:] if argv is None else argv)]
        raise SystemExit(run_finetune(args, settings, command))
    if args.command == "index":
        from service.commands.index_commands import run_index_command  # torch import is slow

        raise SystemExit(run_index_command(args, settings))
    from service.workers.supervisor import default_workers, serve_with_workers

    workers = settings.workers or default_workers()
    if workers > 1:
        raise SystemExit(serve_with_workers(settings, workers))
    from service.app import create_app  # torch import is slow; keep --help fast

    # Exits with status 3 when start-up fails (e.g. weights unavailable), after logging why.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go to ours (service.logs): one format, request ids
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
