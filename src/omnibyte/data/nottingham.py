"""The Nottingham Music Database (``../shared/data/nottingham``, see its README), two ways.

**Tune types** (classification): tunes (``ABC_cleaned/*.abc``) as labelled ABC documents: one
document per tune (from its ``X:`` line to the next), labelled with its tune type, the file's
stem without the alphabetical range of the reel files (``reelsa-c`` -> ``reels``, ``hpps`` =
hornpipes). Tunes are split into train/test by a stable hash of file and tune number (20% test).

**ABC <-> MIDI pairs** (conversion): ``ABC_cleaned/<stem>.abc`` holds many tunes, each starting
at a line ``X: <n>``; ``MIDI/<stem><n>.mid`` is tune ``n`` rendered (melody and chords, two
tracks; ``MIDI/melody/`` holds the melody alone). A tune is named ``<stem><n>`` (``jigs1``).
The ABC of a pair is the tune's text with its ``X:`` line written ``X: 1``: the reference
number only says where the tune sat in its file, nothing a MIDI file could tell, and abc2midi
needs some number there. Trailing blank lines are dropped and the text ends with one newline.
The pairs are split by tune (``split_by_tune``): the sorted tune names are shuffled by a
generator seeded with ``seed`` and the first ``test_fraction`` of them are the held-out test
set, so the same data and seed always give the same test tunes, and no tune is on both sides.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from omnibyte.data.corpus import stable_unit_hash
from omnibyte.data.pairs import PairRecord
from omnibyte.data.sources import Document
from omnibyte.errors import OmnibyteError

# ---- tune types (classification) ------------------------------------------------------------

SPLITS = ("train", "test")
TEST_FRACTION = 0.2
RANGE_SUFFIX = re.compile(r"[a-z]-[a-z]$")  # reelsa-c -> reels
TUNE_START = re.compile(rb"^X:", re.MULTILINE)


def tune_type(file_name: str) -> str:
    return RANGE_SUFFIX.sub("", Path(file_name).stem)


def split_tunes(text: bytes) -> list[bytes]:
    """The tunes of an ABC file: each from an ``X:`` line up to the next."""
    starts = [match.start() for match in TUNE_START.finditer(text)]
    return [text[start:end].strip() + b"\n" for start, end in zip(starts, starts[1:] + [len(text)])]


def nottingham_documents(abc_folder: str | Path, split: str = "train") -> list[Document]:
    """The tunes of ``split`` from the ``.abc`` files in ``abc_folder`` (``ABC_cleaned``)."""
    if split not in SPLITS:
        raise OmnibyteError(f"Nottingham has splits {', '.join(SPLITS)}, not {split!r}")
    files = sorted(Path(abc_folder).glob("*.abc"))
    if not files:
        raise OmnibyteError(f"no .abc files in {abc_folder}")
    documents = []
    for path in files:
        for number, tune in enumerate(split_tunes(path.read_bytes())):
            name = f"nottingham:{path.name}#{number}"
            in_test = stable_unit_hash(name) < TEST_FRACTION
            if in_test == (split == "test"):
                documents.append(Document(name, tune, tune_type(path.name)))
    return documents


# ---- ABC <-> MIDI pairs (conversion) ---------------------------------------------------------

DIRECTIONS = {"abc2midi": ("abc", "midi"), "midi2abc": ("midi", "abc")}
MIDI_PARTS = {"full": "MIDI", "melody": "MIDI/melody"}
DEFAULT_SEED = 0
DEFAULT_TEST_FRACTION = 0.1
TUNE_NUMBER_LINE = re.compile(rb"^X:\s*(\d+)\s*$", re.MULTILINE)
NORMALISED_NUMBER_LINE = b"X: 1"


@dataclasses.dataclass(frozen=True)
class Tune:
    name: str  # <stem><number>, the MIDI file's stem
    abc: bytes
    midi: bytes


def split_abc_file(text: bytes) -> list[tuple[int, bytes]]:
    """(reference number, tune text) of every tune of an ABC file, the ``X:`` line
    normalised to ``X: 1`` and one final newline."""
    starts = list(TUNE_NUMBER_LINE.finditer(text))
    tunes = []
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        body = text[match.end() : end].rstrip()
        tunes.append((int(match.group(1)), NORMALISED_NUMBER_LINE + body + b"\n"))
    return tunes


def check_folder(root: Path) -> Path:
    root = Path(root)
    if not (root / "ABC_cleaned").is_dir() or not (root / "MIDI").is_dir():
        raise OmnibyteError(f"{root} is not the Nottingham folder (it needs ABC_cleaned/ and MIDI/; "
                            "see ../shared/data/README.md)")
    return root


def load_tunes(root: str | Path, midi: str = "full") -> list[Tune]:
    """Every ABC_cleaned tune with its MIDI file, sorted by name. A tune without a MIDI file
    (or a MIDI file without its tune) is an error: the README says all of them match."""
    root = check_folder(Path(root))
    if midi not in MIDI_PARTS:
        raise OmnibyteError(f"unknown MIDI part {midi!r} (choose from {', '.join(MIDI_PARTS)})")
    midi_folder = root / MIDI_PARTS[midi]
    tunes = []
    for abc_path in sorted((root / "ABC_cleaned").glob("*.abc")):
        for number, abc in split_abc_file(abc_path.read_bytes()):
            name = f"{abc_path.stem}{number}"
            midi_path = midi_folder / f"{name}.mid"
            if not midi_path.is_file():
                raise OmnibyteError(f"tune {name} of {abc_path} has no MIDI file {midi_path}")
            tunes.append(Tune(name, abc, midi_path.read_bytes()))
    if not tunes:
        raise OmnibyteError(f"no tunes in {root / 'ABC_cleaned'}")
    return sorted(tunes, key=lambda tune: tune.name)


def split_by_tune(tunes: list[Tune], seed: int = DEFAULT_SEED,
                test_fraction: float = DEFAULT_TEST_FRACTION) -> tuple[list[Tune], list[Tune]]:
    """(train, test) by tune; the same names and seed always give the same test tunes."""
    if not 0.0 < test_fraction < 1.0:
        raise OmnibyteError(f"test fraction must be in (0, 1), got {test_fraction}")
    ordered = sorted(tunes, key=lambda tune: tune.name)
    order = np.random.default_rng(seed).permutation(len(ordered))
    test_count = min(max(round(len(ordered) * test_fraction), 1), len(ordered) - 1)
    test_names = {ordered[index].name for index in order[:test_count]}
    return ([tune for tune in ordered if tune.name not in test_names],
            [tune for tune in ordered if tune.name in test_names])


def tune_record(tune: Tune, direction: str) -> PairRecord:
    if direction not in DIRECTIONS:
        raise OmnibyteError(f"unknown direction {direction!r} (choose from {', '.join(DIRECTIONS)})")
    source_kind, target_kind = DIRECTIONS[direction]
    data = {"abc": tune.abc, "midi": tune.midi}
    return PairRecord(data[source_kind], data[target_kind], source_kind, target_kind, tune.name)


def nottingham_records(root: str | Path, direction: str, seed: int = DEFAULT_SEED,
                       test_fraction: float = DEFAULT_TEST_FRACTION,
                       midi: str = "full") -> tuple[list[PairRecord], list[PairRecord]]:
    """(train, test) records of one direction (``abc2midi`` or ``midi2abc``)."""
    if direction not in DIRECTIONS:
        raise OmnibyteError(f"unknown direction {direction!r} (choose from {', '.join(DIRECTIONS)})")
    train, test = split_by_tune(load_tunes(root, midi), seed, test_fraction)
    return [tune_record(tune, direction) for tune in train], [tune_record(tune, direction) for tune in test]
