"""What a version keeps on disk besides the registry (service.versions.registry): its data
directory and settings, and how far its re-embedding from another version got (a watermark
that a restart resumes from)."""

import hashlib
import json
import re
from pathlib import Path

from service.items.search_index import milvus_uri
from service.settings import Settings
from service.versions.registry import DEFAULT, VersionRecord


def default_record(settings: Settings) -> VersionRecord:
    return VersionRecord(
        DEFAULT, settings.weights or "pretrained, else lite0-package", settings.model
    )


def version_dir(settings: Settings, name: str) -> Path:
    return settings.data_dir if name == DEFAULT else settings.data_dir / "versions" / name


def version_settings(settings: Settings, record: VersionRecord) -> Settings:
    """A version's settings: the service's, with its weights, model and own data directory
    (its index, its converted backends)."""
    if record.name == DEFAULT:
        return settings
    return settings.model_copy(
        update={
            "weights": record.weights,
            "model": record.model,
            "data_dir": version_dir(settings, record.name),
            # On Milvus every version shares the service's Milvus (the embedded one too), each
            # with collections of its own: the live aliases can name any of them.
            "milvus_uri": milvus_uri(settings),
            "milvus_collection_prefix": milvus_prefix(settings, record.name),
        }
    )


def milvus_prefix(settings: Settings, name: str) -> str:
    """A version's Milvus collection prefix: the service's, the version's name in the
    characters Milvus allows, and a digest of the name (two names never share one)."""
    readable = re.sub(r"[^A-Za-z0-9_]", "_", name)
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{settings.milvus_collection_prefix}_v_{readable}_{digest}"


def watermark_path(settings: Settings) -> Path:
    return settings.data_dir / "reembedded.json"


def read_watermark(settings: Settings, source: str) -> int:
    """How far a re-embedding from `source` got before a restart (0: from the start)."""
    path = watermark_path(settings)
    if not path.exists():
        return 0
    recorded = json.loads(path.read_text())
    return int(recorded["label"]) if recorded.get("source") == source else 0


def write_watermark(settings: Settings, source: str, label: int) -> None:
    path = watermark_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"source": source, "label": label}))
    temporary.replace(path)  # the items it counts are durable already (index writes)
