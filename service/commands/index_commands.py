"""`resnet-serve index ...`: add-folder, import-vectors, reindex, rebuild, stats."""

import argparse
import dataclasses
import json
import logging
import sys

from index.collection import CollectionFiles, IndexInUse
from index.milvus_collection import MilvusCollection, MilvusUnavailable
from index.store import ItemStore, ModelMismatch
from service.items.bulk import add_folder, reindex
from service.items.search_index import (
    milvus_token,
    milvus_uri,
    open_collection,
    open_collection_for,
    open_milvus,
)
from service.items.vector_import import ExpectedModel, ImportRefused, import_vectors
from service.model.load_error import ModelLoadError
from service.model.runtime import load_parts, load_runtime
from service.settings import Settings

log = logging.getLogger(__name__)


def run_index_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run one index action; returns the process exit status."""
    try:
        if args.action == "add-folder":
            if not args.folder.is_dir():
                print(f"{args.folder} is not a folder", file=sys.stderr)
                return 2
            runtime = load_runtime(settings)
            collection = open_collection_for(settings, runtime.spec)
            try:
                report = add_folder(
                    runtime, collection, args.folder, settings, not args.no_progress
                )
            finally:
                collection.close()
        elif args.action == "reindex":
            report = reindex(load_runtime(settings), settings, not args.no_progress)
        elif args.action == "import-vectors":
            return _import_vectors(args, settings)
        else:
            return _stats_or_rebuild(args.action, settings)
    except (IndexInUse, ModelMismatch, ModelLoadError, ImportRefused, MilvusUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    # Skipped files are reported, not fatal; fail only when nothing at all could be indexed.
    return 1 if report.failed and not (report.added or report.already_present) else 0


def _import_vectors(args: argparse.Namespace, settings: Settings) -> int:
    """Import, then open the collection once: it builds the index for what came in (in the
    background on a running service, that would take its first minutes), and writes it."""
    if not args.file.is_file():
        print(f"{args.file} is not a file", file=sys.stderr)
        return 2
    if settings.index_engine == "milvus":
        return _import_into_milvus(args, settings)
    expected = _expected_model(settings)
    report = import_vectors(
        args.file, args.fingerprint, expected, settings.index_dir, not args.no_progress
    )
    print(report.summary())
    if report.added:
        print("building the index over the imported vectors ...", flush=True)
        collection = open_collection(
            settings, d=expected.d, fingerprint=expected.fingerprint, model=expected.model
        )
        try:
            collection.settle()
            print(json.dumps(dataclasses.asdict(collection.stats()), indent=2))
        finally:
            collection.close()
    return 1 if report.failed and not (report.added or report.already_present) else 0


def _import_into_milvus(args: argparse.Namespace, settings: Settings) -> int:
    """Into the Milvus collection of the configured model (it indexes as rows arrive)."""
    spec = load_parts(settings).spec
    expected = ExpectedModel(spec.fingerprint, spec.embedding_dim, spec.model_id)
    collection = open_milvus(settings, spec)
    try:
        report = import_vectors(
            args.file,
            args.fingerprint,
            expected,
            settings.index_dir,
            not args.no_progress,
            into=collection,
        )
        print(report.summary())
        print(json.dumps(dataclasses.asdict(collection.stats()), indent=2))
    finally:
        collection.close()
    return 1 if report.failed and not (report.added or report.already_present) else 0


def _milvus_stats(action: str, settings: Settings) -> int:
    from index.milvus_admin import connected, recorded_identity

    if action == "rebuild":
        print("Milvus builds its index as rows arrive: nothing to rebuild", file=sys.stderr)
        return 2
    uri, prefix = milvus_uri(settings), settings.milvus_collection_prefix
    with connected(uri, milvus_token(settings)) as client:
        recorded = recorded_identity(client, prefix)
    if not recorded:
        print(f"no index {prefix} on Milvus at {uri}", file=sys.stderr)
        return 1
    collection = MilvusCollection(
        uri,
        d=int(recorded["d"]),
        fingerprint=recorded["fingerprint"],
        model=recorded["model"],
        prefix=prefix,
        token=milvus_token(settings),
    )
    try:
        print(json.dumps(dataclasses.asdict(collection.stats()), indent=2))
    finally:
        collection.close()
    return 0


def _expected_model(settings: Settings) -> ExpectedModel:
    """The model whose vectors the index takes: the one its items were made with, or, for an
    empty index, the configured model (loaded to learn its fingerprint)."""
    path = CollectionFiles(settings.index_dir).store
    recorded = ItemStore.recorded_model(path) if path.exists() else {}
    if int(recorded.get("count", 0)) and recorded.get("fingerprint"):
        return ExpectedModel(recorded["fingerprint"], int(recorded["d"]), recorded["model"])
    spec = load_parts(settings).spec
    return ExpectedModel(spec.fingerprint, spec.embedding_dim, spec.model_id)


def _stats_or_rebuild(action: str, settings: Settings) -> int:
    """Both work from what the store recorded, so they need no model."""
    if settings.index_engine == "milvus":
        return _milvus_stats(action, settings)
    path = CollectionFiles(settings.index_dir).store
    if not path.exists():
        print(f"no index in {settings.index_dir}", file=sys.stderr)
        return 1
    meta = ItemStore.recorded_model(path)
    collection = open_collection(
        settings, d=int(meta["d"]), fingerprint=meta["fingerprint"], model=meta["model"]
    )
    try:
        if action == "rebuild":
            collection.rebuild()
        print(json.dumps(dataclasses.asdict(collection.stats()), indent=2))
    finally:
        collection.close()
    return 0
