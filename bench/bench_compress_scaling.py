"""How compression throughput scales with the batch of chunks coded together.

Speed does not depend on what the model learned, so a freshly initialised model of the
chosen preset codes a fixed slice of real text; every row checks the round trip.

    python bench/bench_compress_scaling.py --preset small --chunk-size 512 \
        --batches 64,256,1024,4096 --out runs/compress_scaling.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, synchronize, write_json  # noqa: E402

from omnibyte.apps.compress import compress, decompress  # noqa: E402
from omnibyte.models import build_model  # noqa: E402


def timed(function, device: torch.device):
    synchronize(device)
    started = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="flat")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--batches", default="64,256,1024,4096")
    parser.add_argument("--data", default=None, help="file to code (default: this package's sources)")
    parser.add_argument("--out", default="compress_scaling.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(args.arch, args.preset).to(device).eval()
    if args.data:
        source = Path(args.data).read_bytes()
    else:
        source = b"".join(p.read_bytes() for p in sorted(Path(__file__).resolve().parents[1].rglob("*.py")))
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        data = (source * (1 + batch * args.chunk_size // max(len(source), 1)))[: batch * args.chunk_size]
        compress(data[: 4 * args.chunk_size], model, chunk_size=args.chunk_size, batch_size=batch)  # warm-up
        blob, compress_s = timed(lambda: compress(data, model, chunk_size=args.chunk_size, batch_size=batch),
                                 device)
        restored, decompress_s = timed(lambda: decompress(blob, model), device)
        rows.append({"batch": batch, "bytes": len(data), "chunk_size": args.chunk_size,
                     "compress_MBps": len(data) / compress_s / 1e6,
                     "decompress_MBps": len(data) / decompress_s / 1e6,
                     "exact": restored == data})
        print(rows[-1], flush=True)
    print_table(rows, ["batch", "bytes", "chunk_size", "compress_MBps", "decompress_MBps", "exact"])
    write_json(args.out, {"environment": describe_environment(device), "command": " ".join(sys.argv),
                          "arch": args.arch, "preset": args.preset, "results": rows})


if __name__ == "__main__":
    main()
