"""Unique 500-px JPEG uploads, made cheaply enough that the client never limits the server."""

import io
import itertools
from collections.abc import Iterator

import numpy as np
import skimage.data
from PIL import Image

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")


def base_jpegs(long_side: int = 500) -> list[bytes]:
    """Real photos scaled so their long side is `long_side` pixels."""
    encoded = []
    for name in PHOTOS:
        image = Image.fromarray(np.asarray(getattr(skimage.data, name)()))
        scale = long_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def unique_jpegs(long_side: int = 500) -> Iterator[bytes]:
    """Endless JPEGs whose bytes never repeat: a JPEG comment segment carries a counter.

    The pixels (and so decode cost) are those of real photos; only the bytes differ, so no
    content-hash cache can answer them.
    """
    bases = base_jpegs(long_side)
    for counter, base in zip(itertools.count(), itertools.cycle(bases)):
        comment = f"resnet-serve load {counter}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        yield base[:2] + segment + base[2:]  # right after the SOI marker
