"""Visual question answering as conversion: ``image bytes + question`` -> answer.

The ``answer`` task is the ``convert`` task (``omnibyte.tasks.convert``: paired records, loss
on the target only) on records written by ``omnibyte datasets shapes-vqa``; it adds what
``omnibyte answer`` needs to build a source from a user's image: the image ``encoding`` and
``image_size`` the model was trained on, read from the record names
(``omnibyte.data.shapes_vqa``) and recorded in the run's config.

``omnibyte train --task answer DIR`` takes the dataset folder as it is: a folder holding a
shapes-vqa ``dataset.json`` is read through its ``train/`` sub-folder only (validation is split
off it by ``--val-fraction`` as for every task; ``validation/`` and ``test/`` stay held out for
accuracy measurements). A multi-format dataset (``--encoding all``) is trained on through one of
its format folders; its index is refused. Any other path is read as pair files, as ``convert``
reads them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from omnibyte.data.corpus import ByteCorpus
from omnibyte.data.pairs import DATASET_FILE
from omnibyte.data.shapes_vqa import ENCODINGS, IMAGE_SIZES, parse_record_name
from omnibyte.errors import OmnibyteError
from omnibyte.tasks.base import register_task
from omnibyte.tasks.convert import ConvertTask, records_of

if TYPE_CHECKING:
    from omnibyte.models.base import ByteModel

DATASET_NAME = "shapes-vqa"


def dataset_train_folder(path: str | Path) -> Path | None:
    """``path/train`` when ``path`` is a folder written by ``datasets shapes-vqa``, else None; the
    index of a multi-format dataset is refused in one line naming its format folders."""
    manifest = Path(path) / DATASET_FILE
    try:
        described = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(described, dict) or described.get("dataset") != DATASET_NAME:
        return None
    formats = described.get("formats")
    if isinstance(formats, list) and formats:  # several formats: one sub-folder each
        listed = ", ".join(str(Path(path) / str(name)) for name in formats)
        raise OmnibyteError(f"{path} holds Shapes-VQA in {len(formats)} image formats; train on one of its "
                            f"folders: {listed}")
    return Path(path) / "train"


@register_task
class AnswerTask(ConvertTask):
    """``convert`` of (image + question) to an answer, remembering the image encoding and size."""

    name: ClassVar[str] = "answer"

    def __init__(self, source: str = "bytes", target: str = "bytes", encoding: str = "png", image_size: int = 32):
        super().__init__(source, target)
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown image encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size!r}")
        self.encoding, self.image_size = encoding, image_size

    @classmethod
    def read_corpus(cls, paths: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> ByteCorpus:
        """A shapes-vqa dataset folder as its ``train/`` records; other paths as pair files."""
        chosen = [dataset_train_folder(path) or path for path in paths]
        return super().read_corpus(chosen, exclude)

    @classmethod
    def for_data(cls, corpus: ByteCorpus, model: ByteModel | None = None, **options: Any) -> AnswerTask:
        """The task of the one image encoding and size the records hold (from their names)."""
        formats = set()
        for record in records_of(corpus, "training"):
            parsed = parse_record_name(record.name)
            if parsed is None:
                raise OmnibyteError(f"record {record.name or '(unnamed)'} is not a question record "
                                    "(write them with omnibyte datasets shapes-vqa)")
            formats.add(parsed[1:])
        if len(formats) > 1:
            listed = ", ".join(f"{encoding} {size}x{size}" for encoding, size in sorted(formats))
            raise OmnibyteError(f"the data mixes image formats ({listed}); train one format per model")
        encoding, size = formats.pop()
        options = {"encoding": encoding, "image_size": size, **options}
        return super().for_data(corpus, model, **options)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "encoding": self.encoding, "image_size": self.image_size}
