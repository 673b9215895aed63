"""Which model versions exist and which one is live, kept under the data directory.

One small JSON file, replaced atomically (written beside, fsynced, renamed): a kill -9 at any
moment leaves the old file or the new one, so exactly one version is live after a restart.
"""

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from service.on_disk import read_model

DEFAULT = "default"  # the version the service first starts with
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class InvalidVersion(ValueError):
    pass


@dataclass(frozen=True)
class VersionRecord:
    name: str
    weights: str  # anything RESNET_SERVE_WEIGHTS accepts
    model: str  # the timm model id


@dataclass(frozen=True)
class Registry:
    live: str
    versions: tuple[VersionRecord, ...]

    def record(self, name: str) -> VersionRecord | None:
        return next((v for v in self.versions if v.name == name), None)


class _RecordDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    weights: str
    model: str


class _RegistryDocument(BaseModel):
    """versions.json as `save` writes it."""

    model_config = ConfigDict(extra="forbid")

    live: str
    versions: list[_RecordDocument]


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise InvalidVersion(
            f"version name {name!r}: 1-63 characters of a-z, 0-9, '.', '_', '-', starting "
            "with a letter or digit"
        )


class RegistryFile:
    """data_dir/versions.json; its absence means only `default`, live."""

    def __init__(self, data_dir: Path, default: VersionRecord) -> None:
        self.path = data_dir / "versions.json"
        self._default = default

    def load(self) -> Registry:
        if not self.path.exists():
            return Registry(DEFAULT, (self._default,))
        remedy = "restore it from a backup, or remove it to start over with `default` live"
        document = read_model(self.path, _RegistryDocument, remedy)
        versions = tuple(VersionRecord(v.name, v.weights, v.model) for v in document.versions)
        # `default` is what the service's own settings say, whatever was recorded for it.
        versions = (self._default, *(v for v in versions if v.name != DEFAULT))
        live = document.live if any(v.name == document.live for v in versions) else DEFAULT
        return Registry(live, versions)

    def save(self, registry: Registry) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"live": registry.live, "versions": [asdict(v) for v in registry.versions]}
        temporary = self.path.with_suffix(".json.tmp")
        with temporary.open("w") as file:
            json.dump(body, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
