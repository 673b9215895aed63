"""The heads attached to the service: kept in DATA_DIR/heads.json (name -> model directory,
written atomically), so heads attached through the API survive a restart, and read again by
every HTTP worker when the file changes (a head attached through one worker answers in all of
them from their next request).

A head answers only while the live version's base fingerprint is the one it was trained on:
after a switch to another version, heads of the old base are listed as detached and never
applied to a backbone they were not trained on; heads for the new base attach.
"""

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from service.errors import Conflict, InvalidInput, NotFound
from service.heads.head import Head, load_head
from service.model.dir_files import ModelDirError
from service.model.spec import ModelSpec

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NEVER = object()  # heads.json not read yet


def check_head_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"head name {name!r}: 1-64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )


class AttachedHeads:
    def __init__(self, data_dir: Path, configured: dict[str, str]) -> None:
        """`configured`: RESNET_SERVE_HEADS, attached at every start (a DELETE removes one
        until the next start)."""
        self._file = data_dir / "heads.json"
        # The file as last read: (inode, mtime, size); each write replaces it (a new inode),
        # so a change shows even within one tick of the file system's clock. None: no file.
        self._seen: object = _NEVER
        self._heads: dict[str, Head] = {}
        self._broken: dict[str, str] = {}  # name -> why it does not load
        if configured:
            for name in configured:
                check_head_name(name)
            self._write(self._sources() | configured)

    def _sources(self) -> dict[str, str]:
        try:
            recorded = json.loads(self._file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s): no heads until it is fixed", self._file, exc)
            return {}
        return {str(name): str(source) for name, source in dict(recorded).items()}

    def _write(self, sources: dict[str, str]) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._file.with_suffix(".tmp")
        temporary.write_text(json.dumps(sources, indent=2))
        os.replace(temporary, self._file)

    def current(self, spec: ModelSpec) -> dict[str, Head]:
        """Every head that loads, read again if heads.json changed since (a stat per call)."""
        try:
            stat = self._file.stat()
            changed: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            changed = None
        if changed != self._seen:
            self._seen = changed
            self._load(self._sources(), spec)
        return self._heads

    def _load(self, sources: dict[str, str], spec: ModelSpec) -> None:
        heads, broken = {}, {}
        for name, source in sources.items():
            try:
                heads[name] = load_head(name, Path(source), spec.embedding_dim)
            except ModelDirError as exc:
                broken[name] = str(exc)
                log.error("head %s does not load: %s", name, exc)
        self._heads, self._broken = heads, broken

    def answering(self, spec: ModelSpec) -> dict[str, Head]:
        """The heads trained on the live model's base: the ones that answer."""
        return {
            name: head
            for name, head in self.current(spec).items()
            if head.base_fingerprint == spec.fingerprint
        }

    def attach(self, name: str, source: str, spec: ModelSpec) -> tuple[Head, bool]:
        """Attach (or replace) a head; True if it is new. InvalidInput (422) for a directory
        that is not a head, Conflict (409) for a head of another base."""
        check_head_name(name)
        try:
            head = load_head(name, Path(source), spec.embedding_dim)
        except ModelDirError as exc:
            if "full fine-tune" in str(exc):
                raise Conflict(str(exc)) from None
            raise InvalidInput(str(exc)) from None
        if head.base_fingerprint != spec.fingerprint:
            raise Conflict(
                f"head {name!r} was trained on base fingerprint {head.base_fingerprint}, the "
                f"live model's is {spec.fingerprint}: train it on the live model (finetune "
                "--mode head), or attach it after that version goes live"
            )
        sources = self._sources()
        created = name not in sources
        sources[name] = str(Path(source).resolve())
        self._write(sources)
        self.current(spec)
        return head, created

    def remove(self, name: str, spec: ModelSpec) -> None:
        sources = self._sources()
        if name not in sources:
            raise NotFound(f"no head {name!r}")
        del sources[name]
        self._write(sources)
        self.current(spec)

    def describe(self, spec: ModelSpec) -> list[dict[str, Any]]:
        heads = self.current(spec)
        described = [
            {
                "name": name,
                "classes": list(head.classes),
                "source": head.source,
                "base_fingerprint": head.base_fingerprint,
                "validation_top1": head.validation_top1,
                "attached": head.base_fingerprint == spec.fingerprint,
                "error": None,
            }
            for name, head in heads.items()
        ]
        described += [
            {
                "name": name,
                "classes": [],
                "source": self._sources().get(name, ""),
                "base_fingerprint": None,
                "validation_top1": None,
                "attached": False,
                "error": why,
            }
            for name, why in self._broken.items()
        ]
        return sorted(described, key=lambda head: str(head["name"]))
