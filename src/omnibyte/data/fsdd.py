"""The Free Spoken Digit Dataset as labelled 8 kHz, 8-bit, 1-second WAV documents, made in
memory with ``omnibyte.media.audio_to_wav``.

File names are ``{digit}_{speaker}_{index}.wav``; the official split puts index 0-4 in test
(300 files) and 5-49 in train (2,700)."""
from __future__ import annotations

from pathlib import Path

from omnibyte.data.sources import Document
from omnibyte.errors import OmnibyteError
from omnibyte.media import audio_to_wav

SPLITS = ("train", "test")
TEST_INDICES = range(0, 5)


def fsdd_split(file_name: str) -> str:
    """"test" or "train" by the index in ``{digit}_{speaker}_{index}.wav``."""
    return "test" if int(Path(file_name).stem.split("_")[2]) in TEST_INDICES else "train"


def fsdd_documents(recordings: str | Path, split: str = "train") -> list[Document]:
    """The WAVs of ``split`` in ``recordings`` (FSDD's folder of that name), each labelled
    with its digit, in name order."""
    if split not in SPLITS:
        raise OmnibyteError(f"FSDD has splits {', '.join(SPLITS)}, not {split!r}")
    folder = Path(recordings)
    files = sorted(folder.glob("*_*_*.wav"))
    if not files:
        raise OmnibyteError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) in {folder}")
    return [Document(f"fsdd:{split}/{path.name}", audio_to_wav(path), path.stem.split("_")[0])
            for path in files if fsdd_split(path.name) == split]
