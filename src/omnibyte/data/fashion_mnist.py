"""Fashion-MNIST (idx, gzip) as labelled 32x32 24-bit BMP documents, made in memory.

The 28x28 grey images are padded with 2 background pixels on each side (32x32, no
resampling) and written as RGB BMPs, as bGPT standardises images (``omnibyte.media``).
Nothing is written to disk."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from omnibyte.data.sources import Document
from omnibyte.errors import OmnibyteError
from omnibyte.media import pixels_to_bmp

CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle_boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    """An idx array (big-endian dimensions after a 4-byte magic whose last byte is the rank)."""
    try:
        data = gzip.open(path, "rb").read()
    except (OSError, EOFError) as error:
        raise OmnibyteError(f"cannot read {path}: {error}") from None
    rank = data[3]
    dims = np.frombuffer(data, ">u4", rank, 4).astype(np.int64)
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        raise OmnibyteError(f"{path}: idx header says {tuple(dims)}, data holds {body.size} values")
    return body.reshape(dims)


def fashion_mnist_documents(root: str | Path, split: str = "train", limit: int | None = None) -> list[Document]:
    """The ``split`` ("train": 60,000, "test": 10,000) as BMP documents labelled with their
    class name, in file order; ``limit`` keeps the first ones."""
    if split not in FILES:
        raise OmnibyteError(f"Fashion-MNIST has splits {', '.join(FILES)}, not {split!r}")
    images_file, labels_file = (Path(root) / name for name in FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    count = len(labels) if limit is None else min(limit, len(labels))
    padded = np.pad(images[:count], ((0, 0), (2, 2), (2, 2)))
    return [Document(f"fashion-mnist:{split}/{index:05d}.bmp", pixels_to_bmp(padded[index]), CLASSES[labels[index]])
            for index in range(count)]
