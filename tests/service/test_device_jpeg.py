"""JPEG decode on the model's device: which uploads qualify, orientation, parity with Pillow.

On this CPU-only machine the device is the CPU (libjpeg-turbo through torchvision): the same
code path as nvJPEG on CUDA, minus the GPU.
"""

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.errors import InvalidInput, PayloadTooLarge
from service.model import jpeg_upload
from service.model.jpeg_upload import JpegUpload, inspect_jpeg
from service.model.model_io import ModelOutputs
from service.model.runtime import ModelRuntime, load_runtime
from tests.conftest import lite0_settings
from tests.photos import encode, jpeg, photo

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "motorcycle_left", "camera")
LIMIT = 50_000_000


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> ModelRuntime:
    settings = lite0_settings(tmp_path_factory.mktemp("data"), jpeg_decode="device")
    return load_runtime(settings)


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def test_baseline_jpegs_qualify() -> None:
    assert inspect_jpeg(jpeg("coffee"), max_pixels=LIMIT) == JpegUpload(jpeg("coffee"))
    upright = with_orientation(Image.fromarray(photo("coffee")), 1)
    assert inspect_jpeg(upright, max_pixels=LIMIT) is not None
    grey = encode(Image.fromarray(photo("camera")).convert("L"), "JPEG")
    assert inspect_jpeg(grey, max_pixels=LIMIT) is not None


def test_what_the_device_does_not_decode_goes_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    image = Image.fromarray(photo("coffee"))
    progressive = io.BytesIO()
    image.save(progressive, "JPEG", progressive=True)
    cmyk = encode(image.convert("CMYK"), "JPEG")
    rotated = with_orientation(image, 6)
    for data in (progressive.getvalue(), cmyk, rotated, encode(image, "PNG"), b"not an image"):
        assert inspect_jpeg(data, max_pixels=LIMIT) is None
    monkeypatch.setattr(jpeg_upload, "DEVICE_MAX_PIXELS", 1000)  # large: Pillow's draft path
    assert inspect_jpeg(jpeg("coffee"), max_pixels=LIMIT) is None


def test_the_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(PayloadTooLarge):
        inspect_jpeg(jpeg("coffee"), max_pixels=1000)


def test_device_decode_gives_the_model_the_same_input_as_pillow(lite0: ModelRuntime) -> None:
    decoder = lite0.jpeg_decoder
    assert decoder is not None
    uploads = [inspect_jpeg(jpeg(name), max_pixels=LIMIT) for name in PHOTOS]
    assert all(uploads)
    host = [lite0.preprocessor(jpeg(name)) for name in PHOTOS]
    device = lite0.predict_batch(uploads)  # type: ignore[arg-type]
    reference = lite0.predict_batch(host)
    for got, want in zip(device, reference, strict=True):
        assert isinstance(got, ModelOutputs) and isinstance(want, ModelOutputs)
        assert float(got.embedding @ want.embedding) >= 0.99
        assert got.probabilities.argmax() == want.probabilities.argmax()


def test_a_corrupt_jpeg_fails_alone_in_a_mixed_batch(lite0: ModelRuntime) -> None:
    data = jpeg("coffee")
    broken = JpegUpload(data[:600] + bytes(b ^ 0xFF for b in data[600:700]) + data[700:])
    good = inspect_jpeg(jpeg("rocket"), max_pixels=LIMIT)
    assert good is not None
    results = lite0.predict_batch([good, broken, lite0.preprocessor(jpeg("chelsea"))])
    assert isinstance(results[0], ModelOutputs) and isinstance(results[2], ModelOutputs)
    assert isinstance(results[1], InvalidInput)


def test_classify_through_device_decode(tmp_path: Path) -> None:
    app = create_app(lite0_settings(tmp_path, jpeg_decode="device"))
    with TestClient(app) as http:
        files = {"file": ("coffee.jpg", jpeg("coffee"), "image/jpeg")}
        answer = http.post("/v1/classify", files=files).json()
        assert answer["predictions"][0]["label"] == "espresso"
        data = jpeg("chelsea")
        truncated = data[: len(data) // 2]
        assert inspect_jpeg(truncated, max_pixels=LIMIT) is not None  # sent to the device
        refused = http.post("/v1/classify", files={"file": ("c.jpg", truncated, "image/jpeg")})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_input"
        png = http.post(
            "/v1/classify",
            files={"file": ("c.png", encode(Image.fromarray(photo("coffee")), "PNG"), "image/png")},
        )
        assert png.json()["predictions"][0]["label"] == "espresso"  # Pillow's path, beside it
