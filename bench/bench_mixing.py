"""Context mixing (``omnibyte.apps.mixing``) on held-out files: a model from scratch adapting with
and without mixing, and optionally a trained model (the built-in one by default) adapting with
and without it, against xz -9e. Every omnibyte row is a checked round trip.

    python bench/bench_mixing.py --heldout runs/general-mix/heldout --kinds prose,code-c \\
        --sizes 8192,65536 --out bench/results/s21_mixing_cpu.json [--trained]

Each kind's input is its held-out files in name order, concatenated and cut to each size (one
input per size, coded as one container: the bits/byte include the container's header).
"""
from __future__ import annotations

import argparse
import lzma
import sys
import time
from pathlib import Path

import omnibyte  # noqa: F401 (first: its CPU settings must precede torch's start)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, write_json  # noqa: E402

from omnibyte.apps import container  # noqa: E402
from omnibyte.apps.compress import compress, decompress_members, scratch_model  # noqa: E402


def held_out_input(folder: Path, size: int) -> bytes:
    files = sorted(path for path in folder.iterdir() if path.is_file())
    return b"".join(path.read_bytes() for path in files)[:size]


def omnibyte_row(data: bytes, model, label: str, mix: bool, device: str, **options) -> dict:
    started = time.perf_counter()
    blob = compress(data, model, mix=mix, device=device, **options)
    compress_s = time.perf_counter() - started
    started = time.perf_counter()
    exact = decompress_members(blob, None if options.get("builtin") or model is None or
                               isinstance(model, container.FreshModel) else model) == [data]
    header = container.unpack(blob)
    coded = sum(len(stream) for stream in header.streams) + len(header.raw_data)
    return dict(codec=label, mix=mix, bits_per_byte=8 * len(blob) / len(data),
                header_bytes=len(blob) - coded, exact=exact, compress_s=compress_s,
                decompress_s=time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heldout", type=Path, default=Path("runs/general-mix/heldout"))
    parser.add_argument("--kinds", default="prose,code-c")
    parser.add_argument("--sizes", default="8192,65536", help="comma-separated input sizes in bytes")
    parser.add_argument("--preset", default="tiny", help="the model from scratch")
    parser.add_argument("--trained", action="store_true", help="also the built-in model, adapting (8 KB only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    rows = []
    for kind in args.kinds.split(","):
        for size in [int(value) for value in args.sizes.split(",")]:
            data = held_out_input(args.heldout / kind, size)
            xz = 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / len(data)
            rows.append(dict(kind=kind, bytes=len(data), codec="xz -9e", bits_per_byte=xz))
            for mix in (False, True):
                row = omnibyte_row(data, scratch_model(preset=args.preset), f"scratch {args.preset} --adapt", mix,
                                   args.device)
                rows.append(dict(kind=kind, bytes=len(data), **row))
            if args.trained and size <= 8192:
                from omnibyte.models.builtin import BUILTIN_NAME, load_builtin_model

                model = load_builtin_model(args.device)
                for mix in (False, True):
                    row = omnibyte_row(data, model, "built-in --adapt", mix, args.device, adapt=True,
                                       builtin=BUILTIN_NAME)
                    rows.append(dict(kind=kind, bytes=len(data), **row))
            print(f"{kind} {size}: done", flush=True)
    print_table(rows, ["kind", "bytes", "codec", "mix", "bits_per_byte", "header_bytes", "exact", "compress_s",
                       "decompress_s"], title="context mixing on held-out files")
    write_json(args.out, dict(environment=describe_environment(args.device), options=vars(args), rows=rows))


if __name__ == "__main__":
    main()
