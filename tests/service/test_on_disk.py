"""Files the service reads back (versions.json here; the model directory in
tests/finetune): a missing, mistyped or unknown field, or garbage, is named with what to do."""

import json
from pathlib import Path

import pytest

from service.on_disk import BrokenFile
from service.versions.registry import DEFAULT, Registry, RegistryFile, VersionRecord

DEFAULT_RECORD = VersionRecord(DEFAULT, "lite0-package", "tf_efficientnet_lite0")


def test_versions_json_round_trips(tmp_path: Path) -> None:
    file = RegistryFile(tmp_path, DEFAULT_RECORD)
    v2 = VersionRecord("v2", "random", "tf_efficientnet_lite0")
    file.save(Registry("v2", (DEFAULT_RECORD, v2)))
    assert file.load() == Registry("v2", (DEFAULT_RECORD, v2))


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"versions": []}, "live: field required"),
        ({"live": "default", "versions": [{"name": "v2", "weights": 3, "model": "m"}]},
         "versions.0.weights: input should be a valid string"),
        ({"live": "default", "versions": [], "extra": 1}, "extra: extra inputs are not permitted"),
        ([1, 2], "the document"),
    ],
)  # fmt: skip
def test_a_broken_versions_json_names_the_field(
    tmp_path: Path, document: object, named: str
) -> None:
    (tmp_path / "versions.json").write_text(json.dumps(document))
    with pytest.raises(BrokenFile, match=r"versions\.json") as raised:
        RegistryFile(tmp_path, DEFAULT_RECORD).load()
    assert named in str(raised.value) and "remove it to start over" in str(raised.value)


def test_garbage_is_named_too(tmp_path: Path) -> None:
    (tmp_path / "versions.json").write_text("{not json")
    with pytest.raises(BrokenFile, match="unreadable"):
        RegistryFile(tmp_path, DEFAULT_RECORD).load()
