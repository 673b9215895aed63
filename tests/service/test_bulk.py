"""`resnet-serve index ...` commands: add-folder (resumable), reindex, rebuild, stats."""

import json
from pathlib import Path

import pytest
from PIL import Image

from index.collection import Collection
from service.commands.cli import main
from service.items.search_index import open_milvus
from service.model.runtime import load_parts
from service.settings import Settings
from tests.conftest import PINNED_BACKEND
from tests.photos import encode, jpeg, photo


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "cats" / "deeper").mkdir(parents=True)
    (root / "coffee.jpg").write_bytes(jpeg("coffee"))
    (root / "cats" / "my cat.png").write_bytes(encode(photo("chelsea"), "PNG"))
    (root / "cats" / "deeper" / "rocket.JPG").write_bytes(jpeg("rocket"))
    (root / "cats" / "broken.jpg").write_bytes(b"not really a jpeg")
    (root / "notes.txt").write_text("not an image, not even tried")
    Image.new("RGB", (4, 4)).save(root / "tiny.gif")
    return root


@pytest.fixture
def lite0_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("RESNET_SERVE_MODEL", "tf_efficientnet_lite0")
    monkeypatch.setenv("RESNET_SERVE_WEIGHTS", "lite0-package")
    monkeypatch.setenv("RESNET_SERVE_DATA_DIR", str(data_dir))
    for name, value in PINNED_BACKEND.items():
        monkeypatch.setenv(f"RESNET_SERVE_{name.upper()}", str(value))
    return data_dir


def run(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    return int(exited.value.code or 0)


def test_add_folder_adds_images_reports_failures_and_resumes(
    folder: Path, lite0_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("index", "add-folder", str(folder), "--no-progress") == 0
    out = capsys.readouterr().out
    assert "added 4, already present 0, failed 1" in out and "cats/broken.jpg" in out
    assert run("index", "add-folder", str(folder), "--no-progress") == 0
    assert "added 0, already present 4, failed 1" in capsys.readouterr().out

    assert run("index", "stats") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 4 and stats["d"] == 1280 and stats["model"] == "tf_efficientnet_lite0"
    collection = Collection(
        lite0_env / "index", d=1280, fingerprint=stats["fingerprint"], model=stats["model"]
    )
    try:
        assert collection.get("cats/my_cat.png").metadata == {"path": "cats/my cat.png"}  # type: ignore[union-attr]
        assert collection.get("cats/deeper/rocket.JPG") is not None
    finally:
        collection.close()


def test_reindex_moves_the_index_to_a_new_model(
    folder: Path,
    lite0_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("index", "add-folder", str(folder), "--no-progress") == 0
    monkeypatch.setenv("RESNET_SERVE_WEIGHTS", "random")
    assert run("index", "add-folder", str(folder), "--no-progress") == 1
    assert "resnet-serve index reindex" in capsys.readouterr().err
    assert run("index", "reindex", "--no-progress") == 0
    assert "added 4" in capsys.readouterr().out
    assert run("index", "rebuild") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 4
    assert run("index", "add-folder", str(folder), "--no-progress") == 0  # the new model fits


def test_stats_without_an_index_and_a_missing_folder(
    lite0_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("index", "stats") == 1
    assert "no index" in capsys.readouterr().err
    assert run("index", "add-folder", str(tmp_path / "absent")) == 2


def test_add_folder_onto_milvus_adds_and_resumes(
    folder: Path,
    lite0_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RESNET_SERVE_INDEX_ENGINE", "milvus")
    assert run("index", "add-folder", str(folder), "--no-progress") == 0
    assert "added 4, already present 0, failed 1" in capsys.readouterr().out
    assert run("index", "add-folder", str(folder), "--no-progress") == 0
    assert "added 0, already present 4, failed 1" in capsys.readouterr().out
    settings = Settings()
    collection = open_milvus(settings, load_parts(settings).spec)
    try:
        assert collection.count() == 4
        stored = collection.get("cats/my_cat.png")
        assert stored is not None and stored.metadata == {"path": "cats/my cat.png"}
        assert collection.image("coffee.jpg") == jpeg("coffee")
    finally:
        collection.close()


def test_reindex_onto_milvus_moves_to_a_model_of_another_dimension(
    folder: Path,
    lite0_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RESNET_SERVE_INDEX_ENGINE", "milvus")
    assert run("index", "add-folder", str(folder), "--no-progress") == 0
    capsys.readouterr()
    monkeypatch.setenv("RESNET_SERVE_MODEL", "resnet18")  # 512-d, not Lite0's 1280
    monkeypatch.setenv("RESNET_SERVE_WEIGHTS", "random")
    assert run("index", "add-folder", str(folder), "--no-progress") == 1
    assert "resnet-serve index reindex" in capsys.readouterr().err
    assert run("index", "reindex", "--no-progress") == 0
    assert "added 4" in capsys.readouterr().out
    assert run("index", "stats") == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["count"], stats["d"], stats["model"]) == (4, 512, "resnet18")
    assert run("index", "rebuild") == 2  # Milvus indexes as rows arrive
    settings = Settings()
    collection = open_milvus(settings, load_parts(settings).spec)  # the new model fits
    try:
        stored = collection.get("cats/my_cat.png")
        assert stored is not None and stored.metadata == {"path": "cats/my cat.png"}
        assert collection.image("coffee.jpg") == jpeg("coffee")
        hits = collection.similar("coffee.jpg", 3)
        assert hits is not None and len(hits) == 3
    finally:
        collection.close()
