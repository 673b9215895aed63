"""scikit-learn's digits (1,797 8x8 scans of handwritten digits, 10 classes) as an ImageFolder:
a real labelled data set that ships offline, for fine-tuning tests and benchmarks."""

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits_folder(root: Path, per_class: int | None = None, side: int = 64) -> Path:
    """root/<digit>/<n>.png, upscaled to side x side; at most `per_class` images per digit."""
    from sklearn.datasets import load_digits  # imported here: only tests and benchmarks need it

    digits = load_digits()
    written = dict.fromkeys(range(10), 0)
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = int(target)
        if per_class is not None and written[label] >= per_class:
            continue
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        grey = Image.fromarray((np.asarray(pixels) * (255 / 16)).astype(np.uint8), mode="L")
        grey.resize((side, side), Image.Resampling.BILINEAR).save(folder / f"{index}.png")
        written[label] += 1
    return root
