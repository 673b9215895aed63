"""What the service does when an extra is not installed (in process; the e2e twin,
tests/e2e/test_lean_install.py, runs the real service with the packages hidden)."""

from importlib.util import find_spec

import pytest
import torch
from pydantic import ValidationError

import service.extras
from service import extras
from service.model.selection import candidates, library_versions
from service.settings import Settings


@pytest.fixture
def without_openvino_and_gradio(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden = {"openvino", "nncf", "gradio"}
    monkeypatch.setattr(
        service.extras, "find_spec", lambda name: None if name in hidden else find_spec(name)
    )


@pytest.mark.usefixtures("without_openvino_and_gradio")
def test_defaults_do_without_a_missing_extra() -> None:
    settings = Settings()  # the page at /ui and the backend search are on by default
    assert not extras.installed("openvino") and extras.installed("explain")
    chosen = candidates(settings, torch.device("cpu"))
    assert chosen and all(candidate.backend == "torch" for candidate in chosen)
    assert library_versions() == [torch.__version__]


@pytest.mark.usefixtures("without_openvino_and_gradio")
@pytest.mark.parametrize(
    ("asked", "extra"),
    [
        ({"ui": True}, "ui"),
        ({"backend": "openvino"}, "openvino"),
        ({"precision": "int8"}, "openvino"),
    ],
)
def test_a_setting_that_asks_for_a_missing_extra_is_refused(
    asked: dict[str, object], extra: str
) -> None:
    with pytest.raises(ValidationError, match=rf"pip install 'resnet-serve\[{extra}\]'"):
        Settings(**asked)  # type: ignore[arg-type]


def test_with_the_extras_installed_the_same_settings_are_taken() -> None:
    assert Settings(ui=True, backend="openvino", precision="int8").backend == "openvino"
