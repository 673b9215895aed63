"""Unique 500-px JPEG uploads, made cheaply enough that the client never limits the server."""

import io
import itertools
from collections.abc import Iterator
from importlib import resources

from PIL import Image

# Public-domain scikit-image photos that ship with the service (service/model/calibration),
# so load generation needs no test-only packages.
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")


def base_jpegs(long_side: int = 500) -> list[bytes]:
    """Real photos scaled so their long side is `long_side` pixels."""
    encoded = []
    for name in PHOTOS:
        path = resources.files("service.model") / "calibration" / f"{name}.jpg"
        image = Image.open(path).convert("RGB")  # type: ignore[arg-type]
        scale = long_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def unique_jpegs(long_side: int = 500, tag: str = "") -> Iterator[bytes]:
    """Endless JPEGs whose bytes never repeat: a JPEG comment segment carries a counter.

    The pixels (and so decode cost) are those of real photos; only the bytes differ, so no
    content-hash cache can answer them. Generators in different processes need different
    `tag`s to stay unique between them.
    """
    bases = base_jpegs(long_side)
    for counter, base in zip(itertools.count(), itertools.cycle(bases)):
        comment = f"resnet-serve load {tag} {counter}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        yield base[:2] + segment + base[2:]  # right after the SOI marker
