"""Make the integer-numerics test fixtures: streams compressed on one device (the GPU) that the
test suite decodes on another (the CPU machine), bit for bit.

    python bench/make_integer_fixtures.py --device cuda --out tests/fixtures/integer

Builds ``fixture_model(seed)``: a tiny flat model whose float weights come from integers only
(``torch.randint`` on the CPU generator, then exact scaling), so every machine with this
recipe builds the very same model whatever its CPU or its torch's ``normal_`` kernel; it leans
towards English byte frequencies, so text is range-coded rather than stored raw. Compresses a
few small inputs (text, binary, empty, one byte; several chunk layouts) with integer numerics
on ``--device``, checks each decodes on that device AND on the CPU; also compares a random-init
``small`` model's integer frequencies on the device (full forward, eager and CUDA-graph steps)
with the CPU's, bit for bit (exit 1 if any differ); and writes the ``.omb``
files plus ``manifest.json`` (the recipe, each input's SHA-256 and size, the settings, where
it ran) into ``--out``. ``tests/test_compress_integer.py`` rebuilds the model on the CPU and
decodes every fixture. Takes seconds; the output is a few KB.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
from pathlib import Path

import omnibyte  # noqa: F401 (first: its CPU settings must precede torch's start)
import torch

from omnibyte.apps import container
from omnibyte.apps.compress import compress, decompress
from omnibyte.models import BOS, build_model
from omnibyte.models.integer import integer_model

RECIPE = "bench/make_integer_fixtures.py:fixture_model"
FIXTURE_CONFIG = dict(hidden_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                      max_sequence_length=1024)
SAMPLE = (b"It was a bright cold day in April, and the clocks were striking thirteen. The hallway "
          b"smelt of boiled cabbage and old rag mats. At one end of it a coloured poster, too large "
          b"for indoor display, had been tacked to the wall. It depicted simply an enormous face, "
          b"more than a metre wide: the face of a man of about forty-five, with a heavy black "
          b"moustache and ruggedly handsome features.\n")


def fixture_model(seed: int = 0):
    """The fixture's flat model: uniform weights from integers (``randint`` under ``seed``,
    times an exact float64 scale), one embedding dimension held at 4 for every token, and a
    head that reads it as log byte frequencies of ``SAMPLE`` (from integer bit lengths)."""
    model = build_model("flat", "tiny", **FIXTURE_CONFIG)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if parameter.dim() < 2:
                continue  # norm weights stay 1
            draws = torch.randint(-(1 << 15), 1 << 15, parameter.shape, generator=generator, dtype=torch.int64)
            parameter.copy_((draws.double() * (0.02 * math.sqrt(3.0) / (1 << 15))).float())
        model.embed.weight[:, 0] = 4.0
        counts = torch.bincount(torch.tensor(list(SAMPLE)), minlength=256)
        bits = torch.tensor([int(count).bit_length() for count in counts], dtype=torch.float64)
        model.head.weight[:, 0] = ((bits - 8.0) * 0.6 / 8.0).float()  # the normalised dimension 0 is ~8
    return model.eval()


def fixture_inputs() -> dict[str, tuple[bytes, dict]]:
    """name -> (input, compress options): coded text in several layouts, raw binary, edge cases."""
    binary = torch.randint(0, 256, (1500,), generator=torch.Generator().manual_seed(7), dtype=torch.int64)
    text = SAMPLE * 6
    return {
        "text_default": (text, {}),
        "text_chunks": (text[:1500], {"chunk_size": 256, "batch_size": 4}),  # several groups, a short last chunk
        "text_one_row": (text[:700], {"chunk_size": 700, "batch_size": 1}),
        "binary": (bytes(binary.to(torch.uint8).tolist()), {"chunk_size": 512, "batch_size": 2}),
        "mixed": (text[:600] + bytes(binary[:300].to(torch.uint8).tolist()), {"chunk_size": 300, "batch_size": 3}),
        "one_byte": (b"e", {}),
        "empty": (b"", {}),
    }


def cross_device_check(device: str, preset: str = "small", rows: int = 4, length: int = 300) -> dict:
    """A random-init ``preset`` model's integer frequencies on ``device`` (full forward, and eager
    and fast (CUDA-graph) steps) against the CPU's, over ``rows`` x ``length`` random tokens."""
    model = build_model("flat", preset, seed=0).eval()
    tokens = torch.randint(0, 256, (rows, length), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = BOS
    on_cpu = integer_model(model)
    on_device = integer_model(model.to(device))
    expected = on_cpu(tokens)
    same = {"forward": torch.equal(on_device(tokens).cpu(), expected)}
    for fast in (False, True):
        decoder = on_device.decoder(rows, length, fast=fast)
        steps = torch.stack([decoder.step(tokens[:, t].to(device)) for t in range(length)], dim=1)
        same["fast_steps" if fast else "eager_steps"] = torch.equal(steps.cpu(), expected)
    same["fingerprint"] = on_cpu.fingerprint() == on_device.fingerprint()
    return {"preset": preset, "rows": rows, "tokens": length, "bit_identical": same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/integer"))
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here; pass --device cpu to make CPU fixtures", file=sys.stderr)
        return 2
    model_cpu = fixture_model(args.seed)
    model = fixture_model(args.seed).to(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, (data, options) in fixture_inputs().items():
        blob = compress(data, model, numerics="integer", **options)
        assert decompress(blob, model) == data, f"{name}: no round trip on {args.device}"
        assert decompress(blob, model_cpu) == data, f"{name}: made on {args.device}, does not decode on the CPU"
        header = container.unpack(blob)
        raw = int(header.raw_flags().sum())
        (args.out / f"{name}.omb").write_bytes(blob)
        entries.append({"file": f"{name}.omb", "input_sha256": hashlib.sha256(data).hexdigest(),
                        "input_bytes": len(data), "stream_bytes": len(blob), "options": options,
                        "chunks": header.num_chunks, "raw_chunks": raw})
        print(f"{name:14s} {len(data):6,d} -> {len(blob):6,d} bytes, {raw}/{header.num_chunks} chunks raw")
    check = cross_device_check(args.device) if args.device != "cpu" else None
    if check:
        print(f"integer frequencies of a random {check['preset']} model on {args.device} vs the CPU: "
              f"{check['bit_identical']}")
    manifest = {
        "recipe": RECIPE, "seed": args.seed, "config": FIXTURE_CONFIG, "numerics": "integer",
        "device": str(args.device), "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
        "torch": torch.__version__, "omnibyte": omnibyte.__version__, "fixtures": entries,
        "cross_device_check": check,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(path.stat().st_size for path in args.out.iterdir())
    print(f"wrote {len(entries)} streams and manifest.json to {args.out} ({total:,} bytes)")
    return 0 if check is None or all(check["bit_identical"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
