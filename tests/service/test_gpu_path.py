"""The GPU path's logic, exercised on the CPU: buckets, compiled graphs, CUDA candidates."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.data import resolve_model_data_config

from service.model import selection
from service.model.backend import BucketedBackend, TorchBackend, batch_buckets
from service.model.model_io import ModelOutputs
from service.model.runtime import ModelRuntime, load_parts
from service.model.selection import Candidate, Choice, candidates
from tests.conftest import pinned_settings

CPU = torch.device("cpu")


class Recording:
    """A backend that records the batch sizes it is given; row i's outputs are i."""

    name = "recording"

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def forward(self, pixels: np.ndarray) -> ModelOutputs:
        self.sizes.append(len(pixels))
        rows = np.arange(len(pixels), dtype=np.float32)[:, None]
        return ModelOutputs(np.repeat(rows, 3, axis=1), np.repeat(rows, 2, axis=1))


def test_buckets_are_powers_of_four_and_the_max() -> None:
    assert batch_buckets(256) == (1, 4, 16, 64, 256)
    assert batch_buckets(8) == (1, 4, 8)
    assert batch_buckets(1) == (1,)


def test_a_bucketed_backend_pads_to_the_next_bucket_and_returns_only_real_rows() -> None:
    inner = Recording()
    bucketed = BucketedBackend(inner, (1, 4, 16))
    for count in (1, 3, 4, 5, 16):
        out = bucketed.forward(np.ones((count, 2, 2, 3), np.uint8))
        assert out.probabilities.shape == (count, 3) and out.embedding.shape == (count, 2)
        assert np.array_equal(out.embedding[:, 0], np.arange(count))  # the real rows, in order
    assert inner.sizes == [1, 4, 4, 16, 16]


def test_warm_up_runs_every_bucket_up_to_the_batch_size(tmp_path: Path) -> None:
    parts = load_parts(pinned_settings(tmp_path, model="tf_efficientnet_lite0", weights="random"))
    inner = Recording()
    runtime = ModelRuntime(
        spec=parts.spec,
        backend=BucketedBackend(inner, batch_buckets(64)),
        preprocessor=parts.preprocessor,
        device="cpu",
        batch_size=16,
        choice=Choice(Candidate("torch-compile", "fp16"), 16, "test"),
        module=parts.module,
    )
    runtime.warm_up()
    assert inner.sizes == [1, 4, 16]  # 64 is over the batch size: never run, never compiled


def test_on_cuda_auto_tries_fp16_and_compile_and_compares_at_a_real_batch(
    tmp_path: Path,
) -> None:
    cuda = torch.device("cuda")  # only the type is read: no GPU needed
    options = candidates(pinned_settings(tmp_path, backend="auto", precision="auto"), cuda)
    assert set(map(str, options)) == {"torch/fp32", "torch/fp16", "torch-compile/fp16"}
    assert selection.COMPARE_AT["cuda"] >= 64 and max(selection.BATCH_SIZES["cuda"]) == 256
    on_cpu = candidates(pinned_settings(tmp_path, backend="auto", precision="auto"), CPU)
    assert not any(option.backend == "torch-compile" for option in on_cpu)


@pytest.mark.slow
def test_a_compiled_bucketed_backend_matches_eager() -> None:
    module = timm.create_model("test_efficientnet", pretrained=False).eval()
    config = resolve_model_data_config(module)
    eager = TorchBackend(module, config, CPU)
    compiled = BucketedBackend(TorchBackend(module, config, CPU, compile=True), (4,))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 160, 160, 3), np.uint8)
    expected, got = eager.forward(pixels), compiled.forward(pixels)
    assert compiled.name == "torch-compile-cpu-fp32"
    np.testing.assert_allclose(got.embedding, expected.embedding, atol=1e-4)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)
