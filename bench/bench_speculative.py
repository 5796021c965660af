"""Speculative decoding (drafts from the context, verified by the model) against plain decoding.

For each text kind (repetitive: a sentence and a code-like block repeated; random: random bytes),
temperature and batch size, ``model.generate`` runs plainly and with ``speculative=True`` from
the same prompts and seeds; the table shows bytes/s of both, the speed-up, the drafts' acceptance
rate, the bytes each row gains per model call and whether the two samples are the same bytes.

The model is ``--model PATH`` (any omnibyte model folder) or a fresh ``--preset`` trained for
``--train-steps`` Adam steps on the repetitive text (so that at temperature 1 it is confident
enough for drafts to be accepted, as a trained model is on text it knows). Each cell is the
fastest of ``--repeats`` runs.

CPU (a few minutes on 2 cores):
    python bench/bench_speculative.py --preset tiny --out bench/results/speculative_cpu_tiny.json
H200 (about 5 minutes; ``--fast``: plain steps and verify calls replay CUDA graphs, as
``omnibyte generate`` does on CUDA; in bf16 ``same_bytes`` may rarely be False where the two
kernels round a near-tie differently):
    python bench/bench_speculative.py --preset small --device cuda --dtype bf16 --fast --batches 1,8 \\
        --gen-bytes 1000 --train-steps 200 --repeats 2 --out bench/results/speculative_h200.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, synchronize, write_json  # noqa: E402

from omnibyte.models import BOS, ByteModel, build_model  # noqa: E402
from omnibyte.models import speculative as speculation  # noqa: E402
from omnibyte.models.speculative import SpeculationStats  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SENTENCE = b"the quick brown fox jumps over the lazy dog. "
CODE = b"""def add(a, b):
    return a + b


def sub(a, b):
    return a - b


"""


def texts(prompt_bytes: int, batch: int, prompt_file: str | None = None) -> dict[str, list[bytes]]:
    """``batch`` prompts of ``prompt_bytes`` bytes of each kind (rows start at different offsets);
    with ``prompt_file`` (held-out text the model did not train on) also a "file" kind, its rows
    taken from evenly spaced offsets of the file."""
    repetitive = (SENTENCE * 4 + CODE) * (prompt_bytes // 100 + 4)
    rng = np.random.default_rng(0)
    kinds = {
        "repetitive": [repetitive[row * 7 : row * 7 + prompt_bytes] for row in range(batch)],
        "random": [rng.integers(0, 256, prompt_bytes, dtype=np.uint8).tobytes() for _ in range(batch)],
    }
    if prompt_file:
        data = Path(prompt_file).read_bytes()
        spacing = max((len(data) - prompt_bytes) // batch, 1)
        kinds["file"] = [data[row * spacing : row * spacing + prompt_bytes] for row in range(batch)]
    return kinds


def train_briefly(model: ByteModel, data: bytes, steps: int, window: int = 128) -> None:
    """A few Adam steps on random windows of ``data`` (float32, on the model's device)."""
    if steps <= 0:
        return
    device = model.device
    tokens = torch.tensor(list(data), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - window, (16,))
        targets = torch.stack([tokens[start : start + window] for start in starts])
        inputs = torch.cat([torch.full((16, 1), BOS, device=device), targets[:, :-1]], dim=1)
        loss = model.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def timed_generate(model: ByteModel, prompts: list[bytes], args: argparse.Namespace, temperature: float,
                   speculative: bool) -> tuple[list[bytes], float, SpeculationStats]:
    """The samples, the best time of ``--repeats`` runs (a shared machine is noisy) and the stats."""
    options = dict(temperature=temperature, seed=1, fast=args.fast, compile=args.compile)
    # warm-up: graph capture, compilation (the same cache shape as the timed runs), the allocator
    model.generate(prompts, args.gen_bytes, speculative=speculative, **options)
    best = float("inf")
    for _ in range(args.repeats):
        stats = SpeculationStats()
        synchronize(model.device)
        started = time.perf_counter()
        samples = model.generate(prompts, args.gen_bytes, speculative=speculative, stats=stats, **options)
        synchronize(model.device)
        best = min(best, time.perf_counter() - started)
    return samples, best, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="omnibyte model folder (default: a fresh --preset)")
    parser.add_argument("--preset", default="tiny", help="flat preset when no --model is given")
    parser.add_argument("--train-steps", type=int, default=60, help="Adam steps on the repetitive text (fresh preset)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--fast", action="store_true", help="fast decoders (CUDA graphs on CUDA)")
    parser.add_argument("--compile", action="store_true",
                        help="with --fast: torch.compile the decoder's pieces (the plain step and the verify call)")
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--temperatures", default="0,1", help="comma-separated temperatures")
    parser.add_argument("--prompt-bytes", type=int, default=256)
    parser.add_argument("--gen-bytes", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell; the fastest counts")
    parser.add_argument("--prompt-file", default=None,
                        help="held-out text: adds prompts of kind 'file' taken from it")
    parser.add_argument("--host-rounds", action="store_true",
                        help="with --fast: also time speculation with the host's rounds (and Pace) "
                             "against the default rounds on the device")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.model:
        model = ByteModel.from_pretrained(args.model, map_location=args.device)
    else:
        model = build_model("flat", args.preset).to(args.device)
        train_briefly(model, texts(4096, 1)["repetitive"][0], args.train_steps)
    model = model.to(DTYPES[args.dtype]).eval()

    rows = []
    for batch in [int(value) for value in args.batches.split(",")]:
        for kind, prompts in texts(args.prompt_bytes, batch, args.prompt_file).items():
            for temperature in [float(value) for value in args.temperatures.split(",")]:
                plain, plain_seconds, _ = timed_generate(model, prompts, args, temperature, False)
                fast, spec_seconds, stats = timed_generate(model, prompts, args, temperature, True)
                emitted = batch * args.gen_bytes
                row = dict(
                    text=kind, batch=batch, temperature=temperature,
                    plain_bytes_per_s=emitted / plain_seconds, spec_bytes_per_s=emitted / spec_seconds,
                    speedup=plain_seconds / spec_seconds, acceptance=stats.acceptance_rate,
                    row_bytes_per_call=stats.bytes_per_call / batch, drafted=stats.drafted, accepted=stats.accepted,
                    same_bytes=fast == plain,
                )
                if args.host_rounds:
                    speculation.ROUNDS_ON_DEVICE = False
                    host, host_seconds, _ = timed_generate(model, prompts, args, temperature, True)
                    speculation.ROUNDS_ON_DEVICE = True
                    row.update(host_rounds_bytes_per_s=emitted / host_seconds, host_same_bytes=host == plain)
                rows.append(row)
    columns = ["text", "batch", "temperature", "plain_bytes_per_s", "spec_bytes_per_s", "speedup",
               "acceptance", "row_bytes_per_call", "same_bytes"]
    if args.host_rounds:
        columns += ["host_rounds_bytes_per_s", "host_same_bytes"]
    print_table(rows, columns, title=f"speculative decoding, {args.model or args.preset}, {args.dtype}, "
                                     f"{args.device}{' fast' if args.fast else ''}{' compiled' if args.compile else ''}, prompt {args.prompt_bytes} B, "
                                     f"{args.gen_bytes} new bytes")
    write_json(args.out, dict(environment=describe_environment(args.device), options=vars(args), rows=rows))


if __name__ == "__main__":
    main()
