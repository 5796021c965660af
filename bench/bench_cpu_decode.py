"""CPU compression and decompression speed (issue 13 item 3, issue 14): ``tiny`` and the
demo-sized model through the Python API over batch shapes and threads, and the built-in model
through the CLI (``omnibyte compress FILE``, integer and float numerics), with the start-up
shown apart; A/B against an older omnibyte in the same run.

    git worktree add --detach /tmp/before <old commit>
    python bench/bench_cpu_decode.py --before /tmp/before/src --out bench/results/cpu_decode

The API rows' models are trained briefly on the input (``--train-steps``), so that their chunks
are range-coded (an untrained model stores them raw, and decompression never runs it).
Every measurement runs in a fresh process whose ``PYTHONPATH`` is either this checkout's
``src`` ("after") or ``--before`` ("before"), alternating, so both see the same machine load.
Every API row is a checked round trip; the time is the best of ``--repeats`` runs (the
machine is shared: the best run is the least disturbed). CLI rows time the whole command
(import, model load, quantization, coding); ``start-up`` is the same command on a 1-byte file.
KB/s is 1,000 original bytes per second. Writes ``results.json`` and ``results.md`` under
``--out`` (after every row, so a cut-short run keeps what it measured).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = dict(hidden_size=128, num_layers=4, num_query_heads=4, num_key_value_heads=2)
API_COLUMNS = ["version", "model", "chunk", "rows", "threads", "bits_per_byte", "compress_KBps", "decompress_KBps",
               "note"]
CLI_COLUMNS = ["version", "file_bytes", "numerics", "chunk", "rows", "startup_s", "compress_s", "compress_KBps",
               "decompress_s", "decompress_KBps", "bits_per_byte"]


def default_input() -> bytes:
    """This repository's README and docs (English prose and code lines)."""
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return b"".join(path.read_bytes() for path in paths)


# ---- child: one API measurement in a fresh process ---------------------------------------------

def train_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Train ``tiny`` or the demo model briefly on the input and save it: an untrained model
    stores every chunk raw, and decompression would then never run it."""
    import omnibyte  # noqa: F401
    import torch

    from omnibyte import save_model
    from omnibyte.models import build_model

    torch.manual_seed(0)
    model = build_model("flat", "tiny", **(DEMO_MODEL if spec["model"] == "demo" else {}))
    data = torch.frombuffer(bytearray(Path(spec["input"]).read_bytes()), dtype=torch.uint8).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    window, batch = 256, 16
    for _ in range(spec["steps"]):
        starts = torch.randint(0, len(data) - window - 1, (batch,))
        rows = torch.stack([data[start : start + window + 1] for start in starts.tolist()])
        loss = model.loss(rows[:, :-1], rows[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    save_model(model.eval(), spec["out"])
    return {"loss_bits": float(loss) / 0.6931471805599453}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import omnibyte  # noqa: F401 (its CPU settings first)
    import torch

    from omnibyte import load_model
    from omnibyte.apps import compress as codec
    from omnibyte.apps.container import unpack

    torch.set_num_threads(spec["threads"])
    model = load_model(spec["model_dir"]).eval()
    data = Path(spec["input"]).read_bytes()
    best_compress = best_decompress = float("inf")
    blob = b""
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        blob = codec.compress(data, model, spec["chunk"], spec["rows"])
        middle = time.perf_counter()
        restored = codec.decompress(blob, model)
        end = time.perf_counter()
        assert restored == data, "round trip failed"
        best_compress, best_decompress = min(best_compress, middle - start), min(best_decompress, end - middle)
    settings = unpack(blob).settings
    return {"chunk": settings.chunk_size, "rows": settings.batch_size, "bits_per_byte": 8 * len(blob) / len(data),
            "compress_s": best_compress,
            "decompress_s": best_decompress, "compress_KBps": len(data) / 1e3 / best_compress,
            "decompress_KBps": len(data) / 1e3 / best_decompress}


def run_child(src: Path, spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the CLI ---------------------------------------------------------------------------------------

def timed(command: list[str], src: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def cli_row(src: Path, version: str, path: Path, numerics: str, repeats: int, decompress: bool,
            work: Path) -> dict[str, Any]:
    """Best-of-``repeats`` wall time of ``omnibyte compress`` (and one checked decompress)."""
    cli = [sys.executable, "-m", "omnibyte.cli"]
    packed, restored = work / f"{path.name}.{version}.{numerics}.omb", work / f"{path.name}.{version}.out"
    extra = [] if numerics == "auto" else ["--numerics", numerics]
    compress_s = min(timed(cli + ["compress", str(path), "-o", str(packed), "-f", "-q", *extra], src)
                     for _ in range(repeats))
    row: dict[str, Any] = {"version": version, "file_bytes": path.stat().st_size,
                           "numerics": "integer" if numerics == "auto" else numerics, "compress_s": compress_s,
                           "compress_KBps": path.stat().st_size / 1e3 / compress_s,
                           "bits_per_byte": 8 * packed.stat().st_size / path.stat().st_size}
    header = subprocess.run([sys.executable, "-c", "import sys; from omnibyte.apps.container import unpack; "
                             "s = unpack(open(sys.argv[1], 'rb').read()).settings; print(s.chunk_size, s.batch_size)",
                             str(packed)], env=dict(os.environ, PYTHONPATH=str(src)), capture_output=True, text=True,
                            check=True).stdout.split()
    row["chunk"], row["rows"] = int(header[0]), int(header[1])
    if decompress:
        row["decompress_s"] = timed(cli + ["decompress", str(packed), "-o", str(restored), "-f", "-q"], src)
        row["decompress_KBps"] = path.stat().st_size / 1e3 / row["decompress_s"]
        assert restored.read_bytes() == path.read_bytes(), f"CLI round trip failed: {row}"
    return row


def startup(src: Path, version: str, numerics: str, repeats: int, work: Path) -> float:
    one = work / "one_byte.txt"
    one.write_bytes(b"a")
    extra = [] if numerics == "auto" else ["--numerics", numerics]
    return min(timed([sys.executable, "-m", "omnibyte.cli", "compress", str(one), "-o", str(work / "one.omb"),
                      "-f", "-q", *extra], src) for _ in range(repeats))


# ---- main ------------------------------------------------------------------------------------------

def save(out: Path, payload: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    lines = []
    for name, columns in (("api", API_COLUMNS), ("cli", CLI_COLUMNS)):
        rows = payload[name]
        if rows:
            lines.append("| " + " | ".join(columns) + " |")
            lines.append("|" + "---|" * len(columns))
            for row in rows:
                cells = [f"{row[c]:.2f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--before", type=Path, default=None, help="src folder of the omnibyte to compare with")
    parser.add_argument("--out", type=Path, default=None, help="output folder (results.json, results.md)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is kept")
    parser.add_argument("--api-bytes", type=int, default=32768, help="input of the API rows")
    parser.add_argument("--cli-sizes", default="8192,100000", help="file sizes of the CLI rows (bytes)")
    parser.add_argument("--cli-repeats-above", type=int, default=50_000,
                        help="CLI files larger than this run once, compress only for 'before'")
    parser.add_argument("--train-steps", type=int, default=150, help="training steps of the API rows' models")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(train_child(spec) if "steps" in spec else child(spec)))
        return 0
    if args.out is None:
        parser.error("--out is required")

    versions = [("after", ROOT / "src")] + ([("before", args.before.resolve())] if args.before else [])
    payload: dict[str, Any] = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "cpus": os.cpu_count(), "repeats": args.repeats, "api": [], "cli": []}
    data = default_input()
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_decode_"))
    if not args.skip_api:
        api_input = work / "api_input.bin"
        api_input.write_bytes((data * (1 + args.api_bytes // len(data)))[: args.api_bytes])
        model_dirs = {}
        for model in ("tiny", "demo"):  # trained once (by this checkout), loaded by both versions
            model_dirs[model] = work / f"model_{model}"
            trained = run_child(ROOT / "src", {"model": model, "steps": args.train_steps, "input": str(api_input),
                                               "out": str(model_dirs[model])})
            payload.setdefault("training", {})[model] = {"steps": args.train_steps, **trained}
        grid = [(model, chunk, rows, 1) for model in ("tiny", "demo")
                for chunk, rows in ((None, None), (256, 128), (128, 256))] + [("tiny", None, None, 2)]
        for model, chunk, rows, threads in grid:
            for version, src in versions:
                spec = {"model_dir": str(model_dirs[model]), "chunk": chunk, "rows": rows, "threads": threads,
                        "repeats": args.repeats, "input": str(api_input)}
                row = {"version": version, "model": model, "threads": threads,
                       "note": "default layout" if chunk is None else "explicit", **run_child(src, spec)}
                payload["api"].append(row)
                print_table([row], API_COLUMNS)
                save(args.out, payload)
    if not args.skip_cli:
        for numerics in ("auto", "float"):
            for version, src in versions:
                row = {"version": version, "file_bytes": 1, "numerics": "integer" if numerics == "auto" else numerics,
                       "startup_s": startup(src, version, numerics, args.repeats, work)}
                payload["cli"].append(row)
                print_table([row], CLI_COLUMNS)
                save(args.out, payload)
        for size in (int(value) for value in args.cli_sizes.split(",") if value):
            path = work / f"text_{size}.txt"
            path.write_bytes((data * (1 + size // len(data)))[:size])
            large = size > args.cli_repeats_above
            for numerics in ("auto", "float"):
                for version, src in versions:
                    row = cli_row(src, version, path, numerics, 1 if large else args.repeats,
                                  not (large and version == "before"), work)
                    payload["cli"].append(row)
                    print_table([row], CLI_COLUMNS)
                    save(args.out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
