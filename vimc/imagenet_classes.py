"""Class names for predictions: the 1000 ImageNet-1k classes (index order of the official
checkpoints), the ten digits for ``vim_digits``, "class i" otherwise.

``vimc/data/imagenet_classes.txt`` holds one short name per line, line i = class i (the
widely used Keras ``imagenet_class_index`` names with underscores as spaces: 0 tench,
1 goldfish, ..., 207 golden retriever, ..., 999 toilet tissue). Two classes share a name
there (638 and 639 are both "maillot"), as in the source.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CLASSES_FILE = Path(__file__).with_name("data") / "imagenet_classes.txt"


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    names = tuple(line.strip() for line in CLASSES_FILE.read_text().splitlines() if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"{CLASSES_FILE} has {len(names)} names, expected 1000")
    return names


def class_names(model_name: str | None, num_classes: int) -> list[str]:
    """Names for a model's outputs: digits for vim_digits, ImageNet for 1000-class models."""
    if model_name == "vim_digits" and num_classes == 10:
        return [str(i) for i in range(10)]
    if num_classes == 1000:
        return list(imagenet_classes())
    return [f"class {i}" for i in range(num_classes)]


__all__ = ["CLASSES_FILE", "class_names", "imagenet_classes"]
