"""A folder of one's own photos as a labelled data set: one subfolder per class.

DATA_DIR/<class>/*.jpg, or DATA_DIR/train/<class>/... and DATA_DIR/val/<class>/... when the
split is already made; otherwise a stratified split with a fixed seed. Files that do not decode
are listed and skipped; a class with too few images is an error that names it.
"""

import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from service.images import ALLOWED_FORMATS
from service.items.bulk import IMAGE_SUFFIXES

MIN_TRAIN_PER_CLASS = 2
MIN_VAL_PER_CLASS = 1


class DataError(ValueError):
    """The folder cannot be trained on as it is; the message says what to change."""


@dataclass(frozen=True)
class Example:
    path: Path
    label: int


@dataclass
class Dataset:
    classes: list[str]
    train: list[Example]
    val: list[Example]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)

    def summary(self) -> str:
        counts = {name: [0, 0] for name in self.classes}
        for part, examples in ((0, self.train), (1, self.val)):
            for example in examples:
                counts[self.classes[example.label]][part] += 1
        lines = [f"{len(self.classes)} classes, {len(self.train)} train, {len(self.val)} val:"]
        lines += [f"  {name}: {train} train, {val} val" for name, (train, val) in counts.items()]
        lines += [f"  skipped {path}: {why}" for path, why in self.skipped]
        return "\n".join(lines)


def load_folder(root: Path, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    skipped: list[tuple[Path, str]] = []
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_files = _class_files(root / "train", skipped)
        val_files = _class_files(root / "val", skipped)
        if set(train_files) != set(val_files):
            raise DataError(
                f"train/ and val/ must have the same class folders; train only: "
                f"{sorted(set(train_files) - set(val_files))}, val only: "
                f"{sorted(set(val_files) - set(train_files))}"
            )
    else:
        train_files, val_files = _split(_class_files(root, skipped), val_fraction, seed)
    classes = sorted(train_files)
    if len(classes) < 2:
        raise DataError(f"{root} needs at least 2 class folders with images; found {classes}")
    for name in classes:
        if len(train_files[name]) < MIN_TRAIN_PER_CLASS or len(val_files[name]) < MIN_VAL_PER_CLASS:
            raise DataError(
                f"class {name!r} has {len(train_files[name])} training and "
                f"{len(val_files[name])} validation images; each class needs at least "
                f"{MIN_TRAIN_PER_CLASS} and {MIN_VAL_PER_CLASS} (add images or remove the folder)"
            )
    return Dataset(
        classes,
        [Example(p, i) for i, name in enumerate(classes) for p in train_files[name]],
        [Example(p, i) for i, name in enumerate(classes) for p in val_files[name]],
        skipped,
    )


def _class_files(root: Path, skipped: list[tuple[Path, str]]) -> dict[str, list[Path]]:
    """Readable image files per class subfolder (recursively); the rest go to `skipped`."""
    found: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        readable = []
        for path in files:
            why = _unreadable(path)
            if why:
                skipped.append((path, why))
            else:
                readable.append(path)
        if readable:
            found[folder.name] = readable
    return found


def _unreadable(path: Path) -> str | None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file name ({path.suffix or 'no suffix'})"
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"does not decode: {exc}"
    return None


def _split(
    files: dict[str, list[Path]], val_fraction: float, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Stratified: the same share of every class goes to validation, chosen by `seed`."""
    rng = random.Random(seed)
    train, val = {}, {}
    for name, paths in files.items():
        shuffled = list(paths)
        rng.shuffle(shuffled)
        count = max(MIN_VAL_PER_CLASS, round(len(shuffled) * val_fraction))
        val[name], train[name] = sorted(shuffled[:count]), sorted(shuffled[count:])
    return train, val
