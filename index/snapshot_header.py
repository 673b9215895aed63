"""The snapshot header: the small JSON file whose atomic replacement commits a snapshot.

Read with pydantic, so a header with a missing, mistyped or unknown field is refused with the
field named (the collection then rebuilds from the store, which holds every item), and the
FAISS file it names can only be a file of this directory.
"""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from index.plan import IndexPlan

FORMAT = 2


class SnapshotHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int
    watermark: int = Field(ge=0)  # the last label in the snapshot; the store has the rest
    d: int = Field(gt=0)
    factory: str
    fingerprint: str
    plan: IndexPlan
    data: str = Field(pattern=r"^index-\d+\.faiss$")  # the FAISS file, beside the header

    def built_for(self, d: int, factory: str, fingerprint: str) -> bool:
        """Whether the snapshot is of this collection's settings (else it is rebuilt)."""
        wanted = (FORMAT, d, factory, fingerprint)
        return (self.format, self.d, self.factory, self.fingerprint) == wanted


class UnreadableHeader(ValueError):
    """The header is not JSON, or not a header this code writes."""


def read_header(path: Path) -> SnapshotHeader:
    try:
        return SnapshotHeader.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        wrong = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'the document'}: {error['msg'].lower()}"
            for error in exc.errors(include_url=False)
        )
        raise UnreadableHeader(f"{path}: {wrong}") from None
