"""Modality detection and mixed-stream segmentation on real data.

(1) kind accuracy of ``detect`` on single real files: N deterministic samples per kind from
    ../shared/data (text, Linux source, ABC/MIDI, FSDD WAV, Fashion-MNIST re-encoded by
    Pillow, format samples, archives built from those pieces) plus random bytes and a few
    kinds taken from the installed software (ELF, PE, PDF, SVG/XML, HTML, JSON);
(2) ``segment`` on synthetic concatenations of 2-6 real pieces with known boundaries:
    boundary precision/recall/F1 within +-TOL bytes and per-segment kind accuracy.

CPU only (no model); prints tables and writes JSON with --out.
    python bench/bench_detect.py --per-kind 40 --streams 300 --out bench/detect.json
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import io
import json
import lzma
import os
import random
import sys
import tarfile
import time
import zipfile
from pathlib import Path

from omnibyte.apps.detect import detect
from omnibyte.apps.segment import segment

DEFAULT_DATA = Path(os.environ.get("OMNIBYTE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SAMPLE_SUFFIX_KINDS = {".bmp": "bmp", ".gif": "gif", ".jpg": "jpeg", ".png": "png", ".tiff": "tiff",
                       ".webp": "webp", ".pbm": "pnm", ".pgm": "pnm", ".ppm": "pnm", ".ras": "ras", ".sgi": "sgi",
                       ".exr": "exr", ".xbm": "xbm", ".wav": "wav", ".aiff": "aiff", ".aifc": "aiff", ".au": "au"}
IMAGE_FORMATS = {"bmp": "BMP", "png": "PNG", "jpeg": "JPEG", "gif": "GIF", "tiff": "TIFF"}


# ---- real pieces ------------------------------------------------------------------------

class Pools:
    """Real pieces of every kind, loaded once, sampled deterministically."""

    def __init__(self, root: Path, rng: random.Random, code_members: int = 4000):
        self.root, self.rng = root, rng
        self.gcide = gzip.open(root / "text/gcide.txt.gz").read(12_000_000)
        with tarfile.open(root / "text/python-3.11-docs-rst.tar.xz", "r:xz") as archive:
            self.rst = [archive.extractfile(m).read() for m in archive if m.isfile() and m.size <= 64_000]
        self.code = []
        with tarfile.open(root / "code/linux-6.1-core.tar.xz", "r|xz") as archive:
            for index, member in enumerate(archive):
                if index >= code_members:
                    break
                if member.isfile() and member.name.endswith((".c", ".h")) and 200 <= member.size <= 64_000:
                    self.code.append(archive.extractfile(member).read())
        tunes = []
        for path in sorted(glob.glob(str(root / "nottingham/ABC_*/*.abc"))):
            text = Path(path).read_bytes()
            tunes += [b"X:" + tune.rstrip(b"\n") + b"\n" for tune in text.split(b"\nX:")[1:]]
        self.tunes = tunes
        self.midi = sorted(glob.glob(str(root / "nottingham/MIDI/**/*.mid"), recursive=True))
        self.wav = sorted(glob.glob(str(root / "fsdd/recordings/*.wav")))
        self.samples = sorted(path for path in glob.glob(str(root / "format-samples/*/*"))
                              if Path(path).suffix in SAMPLE_SUFFIX_KINDS)
        self.images = self._fashion_images(root / "fashion-mnist/t10k-images-idx3-ubyte.gz")

    @staticmethod
    def _fashion_images(path: Path):
        import numpy as np

        raw = gzip.open(path).read()
        return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)

    def text(self, low: int = 1000, high: int = 16000) -> bytes:
        """A GCIDE excerpt of whole entries (half the time) or a Python-docs .rst file."""
        if self.rng.random() < 0.5:
            return self.rng.choice([doc for doc in self.rst if low // 2 <= len(doc) <= high] or self.rst)
        start = self.gcide.index(b"\n\n", self.rng.randrange(len(self.gcide) - 2 * high)) + 2
        end = self.gcide.index(b"\n\n", start + self.rng.randrange(low, high)) + 1
        return self.gcide[start:end]

    def code_file(self, high: int = 64000) -> bytes:
        return self.rng.choice([source for source in self.code if len(source) <= high])

    def abc(self) -> bytes:
        first = self.rng.randrange(len(self.tunes) - 3)
        return b"\n".join(self.tunes[first:first + self.rng.randint(1, 3)])

    def file(self, paths: list[str]) -> bytes:
        return Path(self.rng.choice(paths)).read_bytes()

    def image(self, kind: str) -> bytes:
        from PIL import Image

        pixels = self.images[self.rng.randrange(len(self.images))]
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").save(buffer, IMAGE_FORMATS[kind])
        return buffer.getvalue()

    def random_bytes(self, low: int = 64, high: int = 65536) -> bytes:
        size = int(round(low * (high / low) ** self.rng.random()))
        return self.rng.randbytes(size)

    def archive(self, kind: str) -> bytes:
        pieces = [self.text(500, 8000), self.code_file(16000), self.file(self.wav)]
        chosen = self.rng.sample(pieces, self.rng.randint(1, 3))
        if kind == "gzip":
            return gzip.compress(chosen[0], mtime=0)
        if kind == "xz":
            return lzma.compress(chosen[0])
        buffer = io.BytesIO()
        if kind == "zip":
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for index, piece in enumerate(chosen):
                    archive.writestr(f"piece{index}", piece)
        else:
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
                for index, piece in enumerate(chosen):
                    info = tarfile.TarInfo(f"piece{index}")
                    info.size = len(piece)
                    archive.addfile(info, io.BytesIO(piece))
        return buffer.getvalue()

    def piece(self, kind: str) -> bytes:
        """One real piece of ``kind`` for mixed streams (kept to a few KiB)."""
        if kind == "text":
            return self.text(300, 6000)
        if kind == "code":
            return self.code_file(12000)
        if kind == "abc":
            return self.abc()
        if kind == "random":
            return self.random_bytes(256, 8192)
        if kind in IMAGE_FORMATS:
            return self.image(kind)
        if kind == "wav":
            return self.file(self.wav)
        if kind == "midi":
            return self.file(self.midi)
        if kind in ("aiff", "au"):
            return self.file([path for path in self.samples if SAMPLE_SUFFIX_KINDS[Path(path).suffix] == kind])
        return self.archive(kind)


def installed_software_files(root: Path) -> dict[str, list[bytes]]:
    """ELF, PE, PDF, XML, HTML and JSON taken from (or written by) the installed software."""
    import pydoc
    import sysconfig

    found: dict[str, list[bytes]] = collections.defaultdict(list)
    elf_paths = [os.path.realpath(sys.executable)] + sorted(glob.glob(str(Path(sysconfig.get_paths()["stdlib"])
                                                                          / "lib-dynload" / "*.so")))[:20]
    found["elf"] = [Path(path).read_bytes() for path in elf_paths if Path(path).is_file()]
    try:
        import pip

        found["pe"] = [Path(path).read_bytes() for path in sorted(glob.glob(os.path.join(
            os.path.dirname(pip.__file__), "_vendor", "distlib", "*.exe")))]
    except ImportError:
        pass
    try:
        import matplotlib

        mpl_data = Path(matplotlib.get_data_path())
        found["pdf"] = [path.read_bytes() for path in sorted(mpl_data.rglob("*.pdf"))[:20]]
        found["xml"] = [path.read_bytes() for path in sorted(mpl_data.rglob("*.svg"))[:20]]
    except ImportError:
        pass
    for name in ("json", "tarfile", "zipfile", "gzip", "random", "glob", "argparse", "csv"):
        module = __import__(name)
        found["html"].append(pydoc.HTMLDoc().page(name, pydoc.HTMLDoc().docmodule(module)).encode())
    manifests = sorted(glob.glob(str(root / "*" / "MANIFEST.tsv")))  # real tables, written as JSON
    for path in manifests:
        rows = [line.split("\t") for line in Path(path).read_text().splitlines()[:200]]
        found["json"].append(json.dumps(rows, indent=1).encode())
        found["json"].append(json.dumps({"source": path, "rows": rows}).encode())
    return dict(found)


# ---- (1) single files ------------------------------------------------------------------

def single_file_cases(pools: Pools, per_kind: int) -> list[tuple[str, str, bytes]]:
    """(kind, source, bytes) with ``per_kind`` cases per kind where the data allows."""
    cases = []
    for _ in range(per_kind):
        cases += [("text", "gcide/rst", pools.text()), ("code", "linux .c/.h", pools.code_file()),
                  ("abc", "nottingham", pools.abc()), ("midi", "nottingham", pools.file(pools.midi)),
                  ("wav", "fsdd", pools.file(pools.wav)), ("random", "rng", pools.random_bytes())]
        cases += [(kind, "fashion-mnist via Pillow", pools.image(kind)) for kind in IMAGE_FORMATS]
        cases += [(kind, "built from real pieces", pools.archive(kind)) for kind in ("gzip", "xz", "zip", "tar")]
    cases += [(SAMPLE_SUFFIX_KINDS[Path(path).suffix], "format-samples", Path(path).read_bytes())
              for path in pools.samples]
    cases += [("gzip", "shared data file", (pools.root / name).read_bytes())
              for name in ("text/gcide.txt.gz", "fashion-mnist/t10k-labels-idx1-ubyte.gz")]
    cases += [("xz", "shared data file", (pools.root / "text/python-3.11-docs-rst.tar.xz").read_bytes())]
    for kind, contents in installed_software_files(pools.root).items():
        cases += [(kind, "installed software", data) for data in contents[:per_kind]]
    return cases


def evaluate_single(cases) -> dict:
    per_kind = collections.defaultdict(lambda: [0, 0])
    confusions = collections.Counter()
    seconds = []
    for kind, source, data in cases:
        start = time.perf_counter()
        found = detect(data).kind
        seconds.append(time.perf_counter() - start)
        per_kind[kind][0] += found == kind
        per_kind[kind][1] += 1
        if found != kind:
            confusions[f"{kind}->{found} ({source})"] += 1
    correct = sum(hits for hits, _ in per_kind.values())
    seconds.sort()
    return {"accuracy": correct / len(cases), "cases": len(cases),
            "per_kind": {kind: {"accuracy": hits / total, "cases": total} for kind, (hits, total) in sorted(per_kind.items())},
            "confusions": dict(confusions.most_common()),
            "median_ms": 1000 * seconds[len(seconds) // 2], "p95_ms": 1000 * seconds[int(len(seconds) * 0.95)]}


# ---- (2) mixed streams -----------------------------------------------------------------

STREAM_KINDS = ("text", "code", "abc", "random", "bmp", "png", "jpeg", "gif", "wav", "midi", "aiff", "au",
                "gzip", "xz", "zip", "tar")
UNSTRUCTURED = ("text", "code", "abc", "random")


def make_stream(pools: Pools) -> tuple[bytes, list[int], list[str]]:
    """2-6 real pieces, neighbours of different kinds; half the streams use only unstructured ones."""
    kinds_pool = UNSTRUCTURED if pools.rng.random() < 0.5 else STREAM_KINDS
    kinds: list[str] = []
    for _ in range(pools.rng.randint(2, 6)):
        kinds.append(pools.rng.choice([kind for kind in kinds_pool if not kinds or kind != kinds[-1]]))
    pieces = [pools.piece(kind) for kind in kinds]
    starts = [0]
    for piece in pieces[:-1]:
        starts.append(starts[-1] + len(piece))
    return b"".join(pieces), starts, kinds


def match_boundaries(true: list[int], predicted: list[int], tolerance: int) -> int:
    """Number of one-to-one matches within ``tolerance`` (greedy by distance)."""
    pairs = sorted((abs(t - p), i, j) for i, t in enumerate(true) for j, p in enumerate(predicted)
                   if abs(t - p) <= tolerance)
    used_true, used_predicted, hits = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_true and j not in used_predicted:
            used_true.add(i)
            used_predicted.add(j)
            hits += 1
    return hits


def evaluate_streams(pools: Pools, count: int, tolerance: int) -> dict:
    true_total = predicted_total = hits = 0
    kind_hits = kind_total = 0
    per_kind = collections.defaultdict(lambda: [0, 0])
    exact = 0
    total_bytes, seconds = 0, 0.0
    for _ in range(count):
        data, starts, kinds = make_stream(pools)
        start = time.perf_counter()
        found = segment(data)
        seconds += time.perf_counter() - start
        total_bytes += len(data)
        true_boundaries, predicted = starts[1:], [piece.start for piece in found[1:]]
        matched = match_boundaries(true_boundaries, predicted, tolerance)
        exact += match_boundaries(true_boundaries, predicted, 0)
        hits += matched
        true_total += len(true_boundaries)
        predicted_total += len(predicted)
        ends = starts[1:] + [len(data)]
        for first, last, kind in zip(starts, ends, kinds):
            best = max(found, key=lambda piece: min(piece.end, last) - max(piece.start, first))
            correct = best.kind == kind
            kind_hits += correct
            kind_total += 1
            per_kind[kind][0] += correct
            per_kind[kind][1] += 1
    precision = hits / max(predicted_total, 1)
    recall = hits / max(true_total, 1)
    return {"streams": count, "tolerance": tolerance, "true_boundaries": true_total,
            "predicted_boundaries": predicted_total, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12), "exact_boundaries": exact / max(true_total, 1),
            "segment_kind_accuracy": kind_hits / max(kind_total, 1),
            "per_kind": {kind: {"accuracy": h / t, "pieces": t} for kind, (h, t) in sorted(per_kind.items())},
            "megabytes_per_second": total_bytes / 1e6 / max(seconds, 1e-9)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-kind", type=int, default=40)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--tolerance", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not (args.data / "README.md").exists():
        print(f"no data at {args.data} (set OMNIBYTE_DATA)", file=sys.stderr)
        return 2
    pools = Pools(args.data, random.Random(args.seed))
    single = evaluate_single(single_file_cases(pools, args.per_kind))
    print(f"(1) single files: kind accuracy {single['accuracy']:.4f} over {single['cases']} files "
          f"(median {single['median_ms']:.2f} ms, p95 {single['p95_ms']:.2f} ms per file)")
    print(f"    {'kind':<8}{'files':>7}{'accuracy':>10}")
    for kind, row in single["per_kind"].items():
        print(f"    {kind:<8}{row['cases']:>7}{row['accuracy']:>10.3f}")
    for confusion, number in single["confusions"].items():
        print(f"    miss: {confusion} x{number}")
    streams = evaluate_streams(pools, args.streams, args.tolerance)
    print(f"(2) mixed streams: {streams['streams']} streams, {streams['true_boundaries']} boundaries; "
          f"within +-{args.tolerance} B: precision {streams['precision']:.4f} recall {streams['recall']:.4f} "
          f"F1 {streams['f1']:.4f}; exact {streams['exact_boundaries']:.3f}; "
          f"segment kind accuracy {streams['segment_kind_accuracy']:.4f}; {streams['megabytes_per_second']:.2f} MB/s")
    print(f"    {'kind':<8}{'pieces':>7}{'accuracy':>10}")
    for kind, row in streams["per_kind"].items():
        print(f"    {kind:<8}{row['pieces']:>7}{row['accuracy']:>10.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"single_files": single, "mixed_streams": streams,
                                        "settings": vars(args) | {"data": str(args.data), "out": str(args.out)}},
                                       indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
