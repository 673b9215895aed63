"""The resnet-serve command line: flags over environment, clear errors."""

import subprocess
import sys

import pytest

from service.commands.cli import build_parser, main, settings_from_args


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_SERVE_PORT", "9000")
    monkeypatch.setenv("RESNET_SERVE_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("RESNET_SERVE_WEIGHTS", "random")
    args = build_parser().parse_args(["serve", "--port", "9100", "--max-wait-ms", "2.5"])
    settings = settings_from_args(args)
    assert settings.port == 9100  # flag wins
    assert settings.max_batch_size == 16  # env used where no flag is given
    assert settings.max_wait_ms == 2.5 and settings.weights == "random"


def test_invalid_values_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--max-batch-size", "0"])
    assert exited.value.code == 2
    assert "max_batch_size" in capsys.readouterr().err


def test_pinned_weights_that_cannot_load_stop_the_server() -> None:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "serve",
            "--weights",
            "/missing/weights.pth",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode != 0
    assert "/missing/weights.pth is neither a file" in finished.stderr
