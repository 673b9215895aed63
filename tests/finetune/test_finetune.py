"""Fine-tuning on a folder of photos (scikit-learn's digits, upscaled), then serving the result."""

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.store import ModelMismatch
from loadtest.common.digits import write_digits_folder
from loadtest.common.processes import LITE0_ENV, free_port
from service.app import create_app
from service.finetune.data import DataError, load_folder
from service.model import model_dir
from service.model.load_error import ModelLoadError
from service.model.runtime import ModelRuntime
from service.model.weights import load_model
from service.workers.process import EXIT_CONFIG_ERROR
from tests.conftest import lite0_settings
from tests.finetuned import LITE0, finetune
from tests.photos import jpeg
from tests.signals import default_ctrl_c


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 40 per digit for training and validation; the rest of the set stays unseen.
    return write_digits_folder(tmp_path_factory.mktemp("digits"), per_class=40)


@pytest.fixture(scope="module")
def unseen(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    everything = write_digits_folder(tmp_path_factory.mktemp("all-digits"))
    return [
        (path, str(digit))
        for digit in range(10)
        for path in sorted((everything / str(digit)).iterdir(), key=lambda p: int(p.stem))[-4:]
    ]


def served_accuracy(model: Path, work: Path, unseen: list[tuple[Path, str]]) -> float:
    settings = lite0_settings(work, weights=str(model))
    with TestClient(create_app(settings)) as http:
        card = http.get("/v1/model").json()
        assert card["num_classes"] == 10 and card["labels"].endswith("labels.json")
        hits = 0
        for path, digit in unseen:
            files = {"file": (path.name, path.read_bytes(), "image/png")}
            top = http.post("/v1/classify", files=files).json()["predictions"][0]
            hits += top["label"] == digit
    return hits / len(unseen)


@pytest.fixture(scope="module")
def head_model(
    digits: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path]]:
    work, out = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("out") / "digits"
    assert finetune(digits, out, work, "--mode", "head", "--no-progress") == 0
    yield out, work


def test_head_mode_writes_a_model_dir_that_serves_its_own_labels(
    head_model: tuple[Path, Path], tmp_path: Path, unseen: list[tuple[Path, str]]
) -> None:
    out, _ = head_model
    assert {p.name for p in out.iterdir()} >= {
        "model.safetensors", "labels.json", "config.json", "metrics.json", "confusion.png"
    }  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["base_model"] == "tf_efficientnet_lite0" and config["mode"] == "head"
    assert config["classes"] == [str(d) for d in range(10)] and "finetune" in config["command"]
    assert set(config["versions"]) == {"resnet-serve", "torch", "timm"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_top1"] >= 0.7 and metrics["val_images"] == 80
    assert served_accuracy(out, tmp_path, unseen) >= 0.6  # chance is 0.1


def test_a_second_head_run_embeds_nothing_again(
    head_model: tuple[Path, Path], digits: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, work = head_model

    def no_embedding(*_: object) -> None:
        raise AssertionError("embedded again: the cache should have answered")

    monkeypatch.setattr(ModelRuntime, "predict_batch", no_embedding)
    again = work.parent / "again"
    assert finetune(digits, again, work, "--mode", "head", "--lr", "0.02", "--no-progress") == 0
    assert json.loads((again / "config.json").read_text())["mode"] == "head"


def test_full_mode_fine_tunes_the_last_stages(
    digits: Path, tmp_path: Path, unseen: list[tuple[Path, str]]
) -> None:
    out = tmp_path / "full"
    flags = ["--mode", "full", "--epochs", "3", "--train-stages", "2", "--hflip", "0"]
    assert finetune(digits, out, tmp_path / "work", *flags, "--no-progress") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and metrics["best_epoch"] >= 1
    assert {"train_loss", "val_loss", "val_top1", "seconds"} <= set(metrics["history"][0])
    assert json.loads((out / "config.json").read_text())["head"] == "linear"
    assert served_accuracy(out, tmp_path / "serve", unseen) >= 0.3  # chance is 0.1


def test_the_index_refuses_to_mix_a_fine_tuned_model_with_the_base(
    head_model: tuple[Path, Path], tmp_path: Path
) -> None:
    out, _ = head_model
    with TestClient(create_app(lite0_settings(tmp_path))) as base:
        stored = base.put("/v1/items/base/one", files={"file": ("c.jpg", jpeg("coffee"))})
        assert stored.status_code == 201  # the index now holds the base model's vectors
    with pytest.raises(ModelMismatch, match="index reindex"):  # noqa: SIM117
        with TestClient(create_app(lite0_settings(tmp_path, weights=str(out)))):
            pass


def test_a_broken_model_dir_says_which_file_and_what_to_do(
    head_model: tuple[Path, Path], tmp_path: Path
) -> None:
    out, _ = head_model
    for missing, words in (
        (model_dir.LABELS, "labels.json is missing"),
        (model_dir.WEIGHTS, "model.safetensors is missing"),
        (model_dir.CONFIG, "resnet-serve finetune"),
    ):
        copy = tmp_path / missing
        shutil.copytree(out, copy)
        (copy / missing).unlink()
        with pytest.raises(ModelLoadError, match=words):
            load_model("ignored", str(copy))
    mislabelled = tmp_path / "mislabelled"
    shutil.copytree(out, mislabelled)
    (mislabelled / model_dir.LABELS).write_text(json.dumps(["a", "b"]))
    with pytest.raises(ModelLoadError, match="does not match the classes"):
        load_model("ignored", str(mislabelled))


def test_a_config_json_that_is_not_what_finetune_writes_is_named_field_by_field(
    head_model: tuple[Path, Path], tmp_path: Path
) -> None:
    out, _ = head_model
    config = json.loads((out / model_dir.CONFIG).read_text())
    broken = {
        "missing": ({k: v for k, v in config.items() if k != "base_model"}, "base_model"),
        "mistyped": (config | {"head": 3}, "head"),
        "unknown": (config | {"surprise": True}, "surprise"),
    }
    for name, (content, field) in broken.items():
        copy = tmp_path / name
        shutil.copytree(out, copy)
        (copy / model_dir.CONFIG).write_text(json.dumps(content))
        with pytest.raises(ModelLoadError, match=f"config.json.*{field}.*fine-tune again"):
            load_model("ignored", str(copy))
    garbage = tmp_path / "garbage"
    shutil.copytree(out, garbage)
    (garbage / model_dir.CONFIG).write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json is unreadable"):
        load_model("ignored", str(garbage))
    (garbage / model_dir.CONFIG).write_text(json.dumps(config))
    (garbage / model_dir.LABELS).write_text(json.dumps({"0": "zero"}))
    with pytest.raises(ModelLoadError, match=r"labels\.json must be a non-empty list"):
        load_model("ignored", str(garbage))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_service_exits_with_a_configuration_error_naming_the_field(
    head_model: tuple[Path, Path], tmp_path: Path, workers: str
) -> None:
    """With workers too: the model worker's configuration error stops the whole service,
    never a restart loop."""
    out, _ = head_model
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    config = json.loads((broken / model_dir.CONFIG).read_text())
    del config["base_model"]
    (broken / model_dir.CONFIG).write_text(json.dumps(config))
    env = (
        os.environ
        | LITE0_ENV
        | {
            "RESNET_SERVE_WEIGHTS": str(broken),
            "RESNET_SERVE_WORKERS": workers,
            "RESNET_SERVE_DATA_DIR": str(tmp_path / "data"),
            "RESNET_SERVE_UI": "false",
        }
    )
    command = [sys.executable, "-m", "service", "serve", "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_CONFIG_ERROR, done.stderr[-2000:]
    assert "config.json" in done.stderr and "base_model" in done.stderr


def test_data_errors_and_skipped_files(tmp_path: Path) -> None:
    root = write_digits_folder(tmp_path / "data", per_class=6)
    (root / "3" / "notes.txt").write_text("not an image")
    (root / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    data = load_folder(root, val_fraction=0.25, seed=1)
    assert data.classes == [str(d) for d in range(10)]
    assert {path.name for path, _ in data.skipped} == {"notes.txt", "broken.png"}
    assert len(data.val) == 20 and len(data.train) == 40  # stratified: 2 of each 6 held out
    assert load_folder(root, 0.25, seed=1).val == data.val  # the seed fixes the split
    for extra in (root / "9").iterdir():
        if extra.name != sorted(p.name for p in (root / "9").iterdir())[0]:
            extra.unlink()
    with pytest.raises(DataError, match="class '9' has"):
        load_folder(root)


def test_ctrl_c_keeps_the_best_epoch_so_far(tmp_path: Path) -> None:
    data = write_digits_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "interrupted"
    command = [
        sys.executable, "-m", "service", "finetune", str(data), "--out", str(out),
        "--data-dir", str(tmp_path / "work"), *LITE0,
        "--mode", "full", "--epochs", "50", "--train-stages", "1", "--no-progress",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, preexec_fn=default_ctrl_c
    )
    assert process.stdout is not None
    with process.stdout:
        for line in process.stdout:  # bounded: the run ends after 50 epochs at the latest
            if line.startswith("epoch   1"):
                process.send_signal(signal.SIGINT)
                break
        assert process.wait(timeout=120) == 130
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["best_epoch"] >= 1
    assert load_model("ignored", str(out)).labels == tuple(str(d) for d in range(10))


def test_a_head_attached_to_the_live_model_answers_as_its_directory_served_alone(
    head_model: tuple[Path, Path], tmp_path: Path, unseen: list[tuple[Path, str]]
) -> None:
    out, _ = head_model
    shown = unseen[::4]
    alone = {}
    with TestClient(create_app(lite0_settings(tmp_path / "alone", weights=str(out)))) as http:
        for path, _digit in shown:
            files = {"file": (path.name, path.read_bytes(), "image/png")}
            alone[path] = http.post("/v1/classify", files=files).json()["predictions"][0]["label"]
    with TestClient(create_app(lite0_settings(tmp_path / "live"))) as http:
        assert http.put("/v1/heads/digits", json={"source": str(out)}).status_code == 201
        assert http.put("/v1/heads/digits", json={"source": str(out)}).status_code == 200
        (listed,) = http.get("/v1/heads").json()["heads"]
        assert listed["attached"] and listed["classes"] == [str(d) for d in range(10)]
        assert listed["validation_top1"] is not None
        forwards = batch_images(http)
        for path, _digit in shown:
            files = {"file": (path.name, path.read_bytes(), "image/png")}
            answer = http.post("/v1/classify", files=files, params={"top_k": 3}).json()
            assert answer["heads"]["digits"]["predictions"][0]["label"] == alone[path]
            assert len(answer["heads"]["digits"]["predictions"]) == 3
            plain = http.post("/v1/classify", files=files, params={"top_k": 3, "heads": ""})
            assert plain.json()["heads"] == {}  # the cached answer: no head, same ImageNet
            assert plain.json()["predictions"] == answer["predictions"]
        # One forward pass per image: the head ran on the embedding the model computed anyway.
        assert batch_images(http) - forwards == len(shown)
        unknown = http.post("/v1/classify", files=files, params={"heads": "nope"})
        assert unknown.status_code == 422 and "GET /v1/heads" in unknown.text
    # A restart keeps the heads attached through the API.
    with TestClient(create_app(lite0_settings(tmp_path / "live"))) as http:
        answer = http.post("/v1/classify", files=files).json()
        assert answer["heads"]["digits"]["predictions"][0]["label"] == alone[shown[-1][0]]
        assert http.delete("/v1/heads/digits").status_code == 204
        assert http.post("/v1/classify", files=files).json()["heads"] == {}
        assert http.delete("/v1/heads/digits").status_code == 404


def batch_images(http: TestClient) -> float:
    """Images the model has run, from /metrics."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("batcher_batch_size_sum{"):
            return float(line.split()[-1])
    raise AssertionError("no batcher_batch_size_sum on /metrics")


def test_heads_that_cannot_answer_here_are_refused_naming_why(
    head_model: tuple[Path, Path], tmp_path: Path
) -> None:
    out, _ = head_model

    def edited(name: str, change: dict[str, object]) -> Path:
        copy = tmp_path / name
        shutil.copytree(out, copy)
        config = json.loads((copy / model_dir.CONFIG).read_text()) | change
        (copy / model_dir.CONFIG).write_text(json.dumps(config))
        return copy

    other_base = edited("other-base", {"base_fingerprint": "0123456789abcdef"})
    full = edited("full", {"mode": "full", "head": "linear"})
    corrupt = edited("corrupt", {})
    (corrupt / model_dir.WEIGHTS).write_bytes(b"\x00" * 64)
    with TestClient(create_app(lite0_settings(tmp_path / "data"))) as http:

        def attach(source: Path) -> tuple[int, str]:
            answer = http.put("/v1/heads/h", json={"source": str(source)})
            return answer.status_code, answer.json()["error"]["message"]

        status, message = attach(other_base)
        assert status == 409 and "0123456789abcdef" in message
        status, message = attach(full)
        assert status == 409 and "model version" in message
        status, message = attach(corrupt)
        assert status == 422 and str(corrupt / model_dir.WEIGHTS) in message
        status, message = attach(tmp_path / "absent")
        assert status == 422 and "absent" in message
        assert http.put("/v1/heads/bad name", json={"source": str(out)}).status_code == 422
        assert http.get("/v1/heads").json()["heads"] == []
