"""Anomaly-detection evaluation: corruptions injected into real held-out files.

Trains a byte model (or loads one with --model) on training parts of real data from
../shared/data (GCIDE dictionary text, Linux C source, FSDD WAV recordings, BMPs made of
Fashion-MNIST images), then takes held-out files of each kind, injects one corruption per
case at a known offset:

  bitflip  flip one random bit in a share (--flip-rate) of the bytes of a region
  random   insert a block of uniformly random bytes
  splice   overwrite a region with bytes from a held-out file of another kind

and scores every corrupted file with the model. Each file is cut into --eval-window byte
windows, labelled positive when they overlap the injected region, scored by the largest
robust z-score of smoothed surprisal inside (omnibyte.apps.anomaly.anomaly_scores), and
ROC-AUC is computed per kind x corruption, per corruption and overall (windows pooled).
Also reported: how often a region found by ``find_regions`` overlaps the injection
(detected, top-1) and how many regions are found in the clean held-out files (false alarms).

CPU smoke test:  python bench/bench_anomaly.py --train-minutes 3 --out anomaly.json
GPU:             python bench/bench_anomaly.py --device cuda --train-minutes 10 --out anomaly.json
Held-out files never overlap training data: GCIDE's last 10% (by bytes), Linux files whose
name hash falls in the validation share, FSDD's official test takes (index 0-4), and
Fashion-MNIST's t10k images.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gzip
import io
import itertools
import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from omnibyte.apps.anomaly import anomaly_scores, find_regions, roc_auc, smooth, surprisal
from omnibyte.data import ByteCorpus, Document, iter_documents
from omnibyte.data.corpus import stable_unit_hash
from omnibyte.devices import autocast, resolve_device
from omnibyte.models import build_model
from omnibyte.fileio import atomic_write_bytes
from omnibyte.models.serialization import load_model
from omnibyte.train.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("OMNIBYTE_DATA", REPO.parent / "shared" / "data"))
CORRUPTIONS = ("bitflip", "random", "splice")
KINDS = ("text", "code", "wav", "bmp")
HELD_OUT_SHARE = 0.1
MIN_FILE_BYTES = 2048
IMAGES_PER_BMP_SIDE = 4  # each BMP is a 4 x 4 grid of 28 x 28 images: 112 x 112 pixels


# ---- real data, split into training documents and held-out files ----------------------

@dataclasses.dataclass
class KindData:
    train: list[Document]
    held_out: list[bytes]


def _take(documents, limit_bytes: int) -> list[Document]:
    taken, total = [], 0
    for document in documents:
        if total >= limit_bytes:
            break
        taken.append(document)
        total += len(document)
    return taken


def _spread(items: list, count: int) -> list:
    """``count`` items evenly spaced through ``items`` (varied files, deterministic)."""
    if len(items) <= count:
        return items
    return [items[int(i * len(items) / count)] for i in range(count)]


def load_text(data_dir: Path, train_bytes: int, files: int, file_bytes: int) -> KindData:
    with gzip.open(data_dir / "text" / "gcide.txt.gz", "rb") as file:
        text = file.read()
    cut = int(len(text) * (1 - HELD_OUT_SHARE))
    train = [Document("gcide.txt", text[:min(cut, train_bytes)])]
    held_out = text[cut:]
    starts = np.linspace(0, len(held_out) - file_bytes, files).astype(int)
    return KindData(train, [held_out[s:s + file_bytes] for s in starts])


def load_code(data_dir: Path, train_bytes: int, files: int, file_bytes: int) -> KindData:
    train, held_out, train_total = [], [], 0
    for document in iter_documents([str(data_dir / "code" / "linux-6.1-core.tar.xz")]):
        if not document.name.endswith((".c", ".h")):
            continue
        if stable_unit_hash(document.name) < HELD_OUT_SHARE:
            if len(document) >= MIN_FILE_BYTES:
                held_out.append(bytes(document.data[:file_bytes]))
        elif train_total < train_bytes:
            train.append(document)
            train_total += len(document)
        if train_total >= train_bytes and len(held_out) >= 4 * files:
            break
    return KindData(train, _spread(held_out, files))


def load_wav(data_dir: Path, train_bytes: int, files: int, file_bytes: int) -> KindData:
    paths = sorted((data_dir / "fsdd" / "recordings").glob("*.wav"))
    is_test = [int(path.stem.rsplit("_", 1)[1]) < 5 for path in paths]  # the official test split
    train_paths = [path for path, test in zip(paths, is_test) if not test]
    rng = np.random.default_rng(0)  # spread the training takes over digits and speakers
    train = _take((Document(path.name, path.read_bytes()) for path in rng.permutation(train_paths)), train_bytes)
    held_out = [path.read_bytes()[:file_bytes] for path, test in zip(paths, is_test) if test]
    return KindData(train, _spread([data for data in held_out if len(data) >= MIN_FILE_BYTES], files))


def _idx_images(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


def _bmp_grids(images: np.ndarray) -> Iterator[bytes]:
    """8-bit greyscale BMPs (Pillow), each a grid of consecutive images."""
    from PIL import Image

    per = IMAGES_PER_BMP_SIDE
    for index in range(len(images) // per**2):
        tiles = images[index * per**2:(index + 1) * per**2].reshape(per, per, 28, 28)
        buffer = io.BytesIO()
        Image.fromarray(tiles.transpose(0, 2, 1, 3).reshape(per * 28, per * 28)).save(buffer, format="BMP")
        yield buffer.getvalue()


def load_bmp(data_dir: Path, train_bytes: int, files: int, file_bytes: int) -> KindData:
    folder = data_dir / "fashion-mnist"
    train_grids = _bmp_grids(_idx_images(folder / "train-images-idx3-ubyte.gz"))
    train = _take((Document(f"fmnist{i}.bmp", grid) for i, grid in enumerate(train_grids)), train_bytes)
    held_out = itertools.islice(_bmp_grids(_idx_images(folder / "t10k-images-idx3-ubyte.gz")), files)
    return KindData(train, [grid[:file_bytes] for grid in held_out])


LOADERS = {"text": load_text, "code": load_code, "wav": load_wav, "bmp": load_bmp}


# ---- corruptions ---------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    kind: str
    corruption: str
    data: bytes
    start: int  # injected region [start, end)
    end: int


def inject(clean: bytes, corruption: str, length: int, rng: np.random.Generator,
           foreign: bytes, flip_rate: float) -> tuple[bytes, int]:
    """``clean`` with one corruption of ``length`` bytes; returns (data, region start).
    Regions start after the first ``length`` bytes so the file's header stays intact."""
    start = int(rng.integers(length, len(clean) - length))
    array = np.frombuffer(clean, np.uint8).copy()
    if corruption == "bitflip":
        hit = rng.random(length) < flip_rate
        bits = rng.integers(0, 8, length).astype(np.uint8)
        array[start:start + length] ^= (hit * (1 << bits)).astype(np.uint8)
        return array.tobytes(), start
    if corruption == "random":
        block = rng.integers(0, 256, length, dtype=np.uint8)
        return np.concatenate([array[:start], block, array[start:]]).tobytes(), start
    if corruption == "splice":
        source = int(rng.integers(0, len(foreign) - length))
        array[start:start + length] = np.frombuffer(foreign, np.uint8)[source:source + length]
        return array.tobytes(), start
    raise ValueError(f"unknown corruption {corruption!r}")


def make_cases(held_out: dict[str, list[bytes]], length: int, flip_rate: float, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for kind, files in held_out.items():
        others = [data for other, datas in held_out.items() if other != kind for data in datas
                  if len(data) > length]
        for clean in files:
            for corruption in CORRUPTIONS:
                foreign = others[int(rng.integers(len(others)))]
                data, start = inject(clean, corruption, length, rng, foreign, flip_rate)
                cases.append(Case(kind, corruption, data, start, start + length))
    return cases


# ---- scoring ---------------------------------------------------------------------------

def window_labels_and_scores(bits: np.ndarray, start: int, end: int, window: int,
                             eval_window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ``eval_window``-byte window: overlaps the injection?, max robust z, max smoothed bits."""
    z_scores, smoothed = anomaly_scores(bits, window), smooth(bits, window)
    starts = np.arange(0, len(bits), eval_window)
    ends = np.minimum(starts + eval_window, len(bits))
    labels = (starts < end) & (start < ends)
    return labels, np.maximum.reduceat(z_scores, starts), np.maximum.reduceat(smoothed, starts)


@dataclasses.dataclass
class Tally:
    labels: list = dataclasses.field(default_factory=list)
    z_scores: list = dataclasses.field(default_factory=list)
    raw_scores: list = dataclasses.field(default_factory=list)
    cases: int = 0
    detected: int = 0
    top1: int = 0
    false_regions: int = 0

    def add(self, labels, z_scores, raw_scores, regions, start: int, end: int) -> None:
        self.labels.append(labels)
        self.z_scores.append(z_scores)
        self.raw_scores.append(raw_scores)
        self.cases += 1
        hits = [region.overlaps(start, end) for region in regions]
        self.detected += any(hits)
        self.top1 += bool(hits) and hits[0]
        self.false_regions += hits.count(False)

    def merge(self, other: Tally) -> None:
        for name in ("labels", "z_scores", "raw_scores"):
            getattr(self, name).extend(getattr(other, name))
        for name in ("cases", "detected", "top1", "false_regions"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict:
        labels = np.concatenate(self.labels)
        return {"cases": self.cases, "windows": int(len(labels)), "positive_windows": int(labels.sum()),
                "auc": roc_auc(labels, np.concatenate(self.z_scores)),
                "auc_raw_bits": roc_auc(labels, np.concatenate(self.raw_scores)),
                "detected": self.detected / self.cases, "top1": self.top1 / self.cases,
                "false_regions_per_file": self.false_regions / self.cases}


# ---- model -----------------------------------------------------------------------------

def steps_in_budget(model, args, device: torch.device, timed_steps: int = 8) -> int:
    """How many optimizer steps fit in --train-minutes, timed on a throwaway copy, so the
    learning-rate schedule decays within the budget instead of being cut off mid-way."""
    probe = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=args.lr)
    tokens = torch.randint(0, 256, (args.batch_size, args.seq_len + 1), device=device)

    def step() -> None:
        with autocast(device):
            loss = probe.loss(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, kernel selection
    durations = []
    for _ in range(timed_steps):
        started = time.time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        durations.append(time.time() - started)
    seconds_per_step = float(np.median(durations))  # robust to a step slowed by other work
    return max(int(args.train_minutes * 60 / seconds_per_step * 0.9), 10)


def train_model(args, kinds: dict[str, KindData], device: torch.device):
    documents = [document for data in kinds.values() for document in data.train]
    corpus = ByteCorpus(documents)
    model = build_model("flat", "tiny", hidden_size=args.hidden, num_layers=args.layers,
                        num_query_heads=max(args.hidden // 64, 2), num_key_value_heads=max(args.hidden // 128, 1),
                        max_sequence_length=args.seq_len)
    print(f"training flat model, {model.num_parameters() / 1e6:.2f}M parameters, on {corpus.num_bytes:,} bytes "
          + ", ".join(f"{kind} {sum(len(d) for d in data.train):,}" for kind, data in kinds.items())
          + f" for at most {args.train_minutes:g} min on {device}")
    if args.steps is None:
        args.steps = steps_in_budget(model, args, device)
        print(f"schedule: {args.steps} steps fit the time budget")
    out = args.work_dir / "model"
    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(seq_len=args.seq_len, batch_size=args.batch_size, steps=args.steps, lr=args.lr,
                         eval_every=0, save_every=10**9, log_every=50, device=str(device),
                         time_limit=args.train_minutes * 60, seed=args.seed)
    torch.manual_seed(args.seed)
    started = time.time()
    result = Trainer(model, corpus, config, out, progress=not args.no_progress).fit()
    print(f"trained {result.step} steps in {(time.time() - started) / 60:.1f} min "
          f"(train {result.train_bits_per_byte:.3f} bits/byte); saved to {out} (reuse with --model {out})")
    return model.eval(), {"steps": result.step, "train_bits_per_byte": result.train_bits_per_byte,
                          "minutes": (time.time() - started) / 60, "saved_to": str(out)}


# ---- main ------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--model", type=Path, default=None, help="evaluate this model instead of training one")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_anomaly")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-minutes", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=None,
                        help="schedule length (default: as many steps as fit in --train-minutes)")
    parser.add_argument("--hidden", type=int, default=None, help="default: cpu 128, cuda 512")
    parser.add_argument("--layers", type=int, default=None, help="default: cpu 4, cuda 8")
    parser.add_argument("--seq-len", type=int, default=None, help="default: cpu 256, cuda 1024")
    parser.add_argument("--batch-size", type=int, default=None, help="default: cpu 16, cuda 64")
    parser.add_argument("--lr", type=float, default=None, help="default: cpu 3e-3, cuda 1e-3")
    parser.add_argument("--train-bytes", type=int, default=None, help="per kind (default: cpu 3 MB, cuda 20 MB)")
    parser.add_argument("--files", type=int, default=None, help="held-out files per kind (default: cpu 8, cuda 40)")
    parser.add_argument("--file-bytes", type=int, default=8192, help="held-out files are cut to this length")
    parser.add_argument("--region-bytes", type=int, default=256, help="length of each injected region")
    parser.add_argument("--flip-rate", type=float, default=0.5, help="share of region bytes with a flipped bit")
    parser.add_argument("--window", type=int, default=64, help="smoothing window (bytes)")
    parser.add_argument("--eval-window", type=int, default=64, help="labelled window size for ROC-AUC (bytes)")
    parser.add_argument("--threshold", type=float, default=4.0, help="find_regions threshold (robust z)")
    parser.add_argument("--score-batch", type=int, default=None, help="scoring batch (default: cpu 8, cuda 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    return parser.parse_args()


def fill_defaults(args: argparse.Namespace, device: torch.device) -> None:
    cuda = device.type == "cuda"
    defaults = {"hidden": (128, 512), "layers": (4, 8), "seq_len": (256, 1024),
                "batch_size": (16, 64), "lr": (3e-3, 1e-3), "train_bytes": (3_000_000, 20_000_000),
                "files": (8, 40), "score_batch": (8, 64)}
    for name, (cpu_value, cuda_value) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, cuda_value if cuda else cpu_value)


def print_table(rows: list[tuple[str, str, dict]]) -> None:
    print(f"{'kind':<8}{'corruption':<11}{'cases':>6}{'windows':>9}{'AUC':>8}{'AUC raw':>9}"
          f"{'detected':>10}{'top-1':>7}{'false/file':>11}")
    for kind, corruption, s in rows:
        print(f"{kind:<8}{corruption:<11}{s['cases']:>6}{s['windows']:>9}{s['auc']:>8.4f}{s['auc_raw_bits']:>9.4f}"
              f"{s['detected']:>10.2f}{s['top1']:>7.2f}{s['false_regions_per_file']:>11.2f}")


def main() -> int:
    args = parse_args()
    device = resolve_device(args.device)
    fill_defaults(args, device)
    if not args.data.is_dir():
        raise SystemExit(f"data folder not found: {args.data} (set OMNIBYTE_DATA)")
    started = time.time()
    kinds = {kind: LOADERS[kind](args.data, 0 if args.model else args.train_bytes, args.files, args.file_bytes)
             for kind in KINDS}
    print(f"data loaded in {time.time() - started:.1f}s: "
          + ", ".join(f"{kind} {len(data.held_out)} held-out files" for kind, data in kinds.items()))
    if args.model:
        model, training = load_model(args.model, device), {"loaded_from": str(args.model)}
    else:
        model, training = train_model(args, kinds, device)
    context = min(args.seq_len, model.max_seq_len)

    def score(data: bytes) -> np.ndarray:
        return surprisal(data, model, context=context, stride=context // 2, batch_size=args.score_batch)

    started = time.time()
    clean_bits = {kind: [score(data) for data in data_of.held_out] for kind, data_of in kinds.items()}
    clean = {kind: {"files": len(bits), "bits_per_byte": float(np.mean(np.concatenate(bits))),
                    "false_regions_per_file": float(np.mean([len(find_regions(b, args.window, args.threshold))
                                                            for b in bits]))}
             for kind, bits in clean_bits.items()}
    cases = make_cases({kind: data.held_out for kind, data in kinds.items()}, args.region_bytes,
                       args.flip_rate, args.seed)
    tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
    for case in cases:
        bits = score(case.data)
        regions = find_regions(bits, args.window, args.threshold)
        tallies[case.kind, case.corruption].add(
            *window_labels_and_scores(bits, case.start, case.end, args.window, args.eval_window),
            regions, case.start, case.end)
    score_seconds = time.time() - started
    scored_bytes = sum(len(case.data) for case in cases) + sum(len(d) for k in kinds.values() for d in k.held_out)

    rows = [(kind, corruption, tallies[kind, corruption].summary()) for kind in KINDS for corruption in CORRUPTIONS]
    by_corruption, overall = {}, Tally()
    for corruption in CORRUPTIONS:
        total = Tally()
        for kind in KINDS:
            total.merge(tallies[kind, corruption])
        by_corruption[corruption] = total.summary()
        overall.merge(total)
    overall_summary = overall.summary()

    print(f"\nheld-out clean files (bits/byte, false regions per file at z > {args.threshold:g}): "
          + ", ".join(f"{kind} {c['bits_per_byte']:.3f} / {c['false_regions_per_file']:.2f}"
                      for kind, c in clean.items()))
    print(f"scored {scored_bytes:,} bytes in {score_seconds:.1f}s; region {args.region_bytes} bytes, "
          f"smoothing {args.window}, eval windows {args.eval_window} bytes\n")
    print_table(rows + [("all", corruption, s) for corruption, s in by_corruption.items()]
                + [("all", "all", overall_summary)])
    verdict = "meets" if overall_summary["auc"] >= 0.95 else "misses"
    print(f"\noverall region-detection ROC-AUC {overall_summary['auc']:.4f} ({verdict} the 0.95 target)")

    if args.out:
        report = {"benchmark": "anomaly", "device": str(device), "torch": torch.__version__,
                  "model": {"parameters": model.num_parameters(), "config": model.config.to_dict(),
                            "context": context, **training},
                  "settings": {name: (str(value) if isinstance(value, Path) else value)
                               for name, value in vars(args).items()},
                  "clean": clean, "overall": overall_summary, "by_corruption": by_corruption,
                  "by_kind": {f"{kind}/{corruption}": s for kind, corruption, s in rows},
                  "score_seconds": score_seconds, "scored_bytes": scored_bytes}
        atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
