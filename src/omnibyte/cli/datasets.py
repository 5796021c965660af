"""``omnibyte datasets``: write paired records for ``omnibyte train --task convert``.

* ``nottingham``: ABC <-> MIDI pairs of the Nottingham Music Database, split by tune;
* ``cpu``: (initial state + program, final state) records of omnibyte's CPU simulator;
* ``shapes-vqa``: (image + question, answer) records of synthetic scenes (``data.shapes_vqa``).

Each writes ``OUT/train/`` and ``OUT/test/`` (pair files) and ``OUT/dataset.json``; train on
``OUT/train`` (validation is split off it by tune/record) and keep ``OUT/test`` held out.
``shapes-vqa`` also writes ``OUT/validation/`` and is trained on as ``OUT`` itself
(``omnibyte train --task answer OUT`` reads its ``train/``); asked for several image formats
(``--encoding all``, ``--size 32 64``) it writes one such folder per format,
``OUT/<encoding><size>/``, with the same scenes and questions, and an index ``OUT/dataset.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from omnibyte import cpusim
from omnibyte.cli.common import Subparsers, int_in, real_in, seed_int
from omnibyte.data import nottingham, shapes_vqa
from omnibyte.data.pairs import (
    DATASET_FILE,
    PairRecord,
    check_dataset_folder,
    remove_previous_dataset,
    write_pair_dataset,
)
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import atomic_write_bytes

DEFAULT_NOTTINGHAM = Path("../shared/data/nottingham")
CPU_RECORDS_PER_FILE = 10_000
MAX_RECORDS = 10_000_000
MAX_SCENES = 1_000_000
VQA_RECORDS_PER_FILE = 5_000
program_length = int_in(1, cpusim.MAX_PROGRAM_LENGTH)


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("datasets",
                                   help="write paired records to train conversion and question answering models on",
                                   description="Write paired records (OUT/train, OUT/test; shapes-vqa also "
                                               "OUT/validation) for "
                                               "omnibyte train --task convert (shapes-vqa: --task answer).")
    kinds = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET",
                                  help="which records to write")
    music = kinds.add_parser("nottingham", help="ABC <-> MIDI pairs of the Nottingham Music Database")
    music.add_argument("--direction", required=True, choices=list(nottingham.DIRECTIONS),
                       help="abc2midi: ABC source, MIDI target; midi2abc: the other way")
    music.add_argument("--data", type=Path, default=DEFAULT_NOTTINGHAM, metavar="DIR",
                       help="the Nottingham folder (with ABC_cleaned/ and MIDI/)")
    music.add_argument("--midi", choices=list(nottingham.MIDI_PARTS), default="full",
                       help="full: melody and chords (MIDI/); melody: the melody alone (MIDI/melody/)")
    music.add_argument("--test-fraction", type=real_in(0.0, 1.0, include_low=False, include_high=False),
                       default=nottingham.DEFAULT_TEST_FRACTION, metavar="F", help="share of tunes held out as test")
    music.add_argument("--seed", type=seed_int, default=nottingham.DEFAULT_SEED, help="seed of the split by tune")
    add_output_options(music)
    music.set_defaults(handler=run_nottingham)

    cpu = kinds.add_parser("cpu", help="CPU simulator records: initial state + program -> final state")
    cpu.add_argument("--records", required=True, type=int_in(1, MAX_RECORDS), metavar="N", help="training records")
    cpu.add_argument("--test-records", type=int_in(0, MAX_RECORDS), default=None, metavar="N",
                     help="held-out records (default: a tenth of --records, at least 1)")
    cpu.add_argument("--min-length", type=program_length, default=1, metavar="N", help="fewest instructions")
    cpu.add_argument("--max-length", type=program_length, default=16, metavar="N", help="most instructions")
    cpu.add_argument("--seed", type=seed_int, default=0, help="seed of the records")
    cpu.add_argument("--trace", action="store_true",
                     help="targets are traces: what each instruction wrote, then the final state (bGPT's "
                          "CPU data records the state after every instruction); default: the final state only")
    add_output_options(cpu)
    cpu.set_defaults(handler=run_cpu)

    vqa = kinds.add_parser("shapes-vqa", help="questions about synthetic scenes of shapes: image + question -> "
                           "answer (for omnibyte train --task answer)")
    vqa.add_argument("--scenes", required=True, type=int_in(1, MAX_SCENES), metavar="N",
                     help="training scenes (up to 5 questions each)")
    vqa.add_argument("--test-scenes", type=int_in(1, MAX_SCENES), default=None, metavar="N",
                     help="validation scenes and test scenes, each (default: a tenth of --scenes, at least 1)")
    vqa.add_argument("--size", type=int, nargs="+", choices=shapes_vqa.IMAGE_SIZES, default=[32],
                     help="image width and height; several: one sub-folder per format (see --encoding)")
    vqa.add_argument("--encoding", nargs="+", choices=[*shapes_vqa.ENCODINGS, "all"], default=["png"],
                     help="pixels: raw RGB rows; bmp, png, jpeg: files written by Pillow; all: the four. With "
                          "several encodings or sizes every scene is saved in each, as OUT/<encoding><size>/ "
                          "(e.g. OUT/png32), each a dataset to train on")
    vqa.add_argument("--seed", type=seed_int, default=0, help="seed of the scenes and questions")
    add_output_options(vqa)
    vqa.set_defaults(handler=run_shapes_vqa)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write train/ and test/ into")
    parser.add_argument("--force", action="store_true", help="write into a folder that is not empty (replacing "
                        "the files of a dataset written there before)")


def report(out: Path, manifest: dict) -> int:
    counts = manifest["records"]
    print(f"wrote {counts['train']:,} training and {counts['test']:,} test records to {out} "
          f"(train on {out / 'train'}; {out / 'test'} is held out)")
    return 0


def run_nottingham(args: argparse.Namespace) -> int:
    check_dataset_folder(args.out, args.force)
    train, test = nottingham.nottingham_records(args.data, args.direction, args.seed, args.test_fraction, args.midi)
    description = {"dataset": "nottingham", "direction": args.direction, "midi": args.midi,
                   "seed": args.seed, "test_fraction": args.test_fraction, "source": str(args.data)}
    return report(args.out, write_pair_dataset(args.out, {"train": train, "test": test}, description))


def unseen(records: list[PairRecord], seen: set[bytes]) -> list[PairRecord]:
    """``records`` whose source is not in ``seen`` (held-out records are never training records)."""
    return [record for record in records if record.source not in seen]


def run_cpu(args: argparse.Namespace) -> int:
    if args.min_length > args.max_length:
        raise OmnibyteError(f"--min-length {args.min_length} is above --max-length {args.max_length}")
    check_dataset_folder(args.out, args.force)
    test_count = args.test_records if args.test_records is not None else max(args.records // 10, 1)

    def records(count: int, stream: int, prefix: str) -> list[PairRecord]:
        pairs = cpusim.generate_records(count, args.seed, args.min_length, args.max_length, stream, args.trace)
        return [PairRecord(source, target, "cpu", "cpu-trace" if args.trace else "cpu-state", f"{prefix}{index}")
                for index, (source, target) in enumerate(pairs)]

    train = records(args.records, 0, "train")
    test = unseen(records(test_count, 1, "test"), {record.source for record in train})
    description = {"dataset": "cpu", "seed": args.seed, "min_length": args.min_length,
                   "max_length": args.max_length, "state_bytes": cpusim.STATE_BYTES, "trace": args.trace}
    manifest = write_pair_dataset(args.out, {"train": train, "test": test}, description,
                                  records_per_file=CPU_RECORDS_PER_FILE)
    return report(args.out, manifest)


def vqa_formats(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(encoding, size) of every format asked for, in a fixed order, each once."""
    encodings = shapes_vqa.ENCODINGS if "all" in args.encoding else dict.fromkeys(args.encoding)
    return [(encoding, size) for size in dict.fromkeys(args.size) for encoding in encodings]


def run_shapes_vqa(args: argparse.Namespace) -> int:
    check_dataset_folder(args.out, args.force)
    held_out = args.test_scenes if args.test_scenes is not None else max(args.scenes // 10, 1)
    scenes = {"train": args.scenes, "validation": held_out, "test": held_out}
    formats = vqa_formats(args)
    common = {"dataset": "shapes-vqa", "seed": args.seed, "scenes": scenes,
              "question_types": list(shapes_vqa.QUESTION_TYPES)}
    if len(formats) > 1:  # OUT's own earlier dataset goes first; the sub-folders replace theirs
        remove_previous_dataset(args.out)
    written = []
    for encoding, size in formats:
        folder = args.out if len(formats) == 1 else args.out / shapes_vqa.format_name(encoding, size)
        splits = {split: shapes_vqa.split_records(split, count, args.seed, encoding, size)
                  for split, count in scenes.items()}
        manifest = write_pair_dataset(folder, splits, {**common, "encoding": encoding, "size": size},
                                      records_per_file=VQA_RECORDS_PER_FILE)
        written += [str(Path(folder.name) / name) for name in [*manifest["files"], DATASET_FILE]
                    if folder != args.out]
    counts = manifest["records"]
    if len(formats) > 1:  # an index of the formats: trained on one at a time, never on OUT itself
        names = [shapes_vqa.format_name(encoding, size) for encoding, size in formats]
        atomic_write_bytes(args.out / DATASET_FILE, (json.dumps(
            {**common, "formats": names, "records": counts, "files": written}, indent=2) + "\n").encode())
        print(f"wrote {counts['train']:,} training, {counts['validation']:,} validation and {counts['test']:,} test "
              f"records in each of {', '.join(names)} under {args.out} (train with omnibyte train --task answer "
              f"{args.out / names[0]})")
        return 0
    print(f"wrote {counts['train']:,} training, {counts['validation']:,} validation and {counts['test']:,} test "
          f"records to {args.out} (train with omnibyte train --task answer {args.out})")
    return 0
