"""CPU speed of training and compression steps before and after omnibyte's CPU settings, on an
idle machine and next to one busy neighbour process.

    python bench/bench_cpu.py --out bench/results/cpu_threads.json

Each measurement runs in a fresh process (thread settings are per process). "before" is what
omnibyte 0.1 ran with: torch's own thread choice and GNU OpenMP's default spin count (300,000).
"after" is what omnibyte sets now: a short spin (``GOMP_SPINCOUNT`` in ``omnibyte/__init__``)
and the threads of ``omnibyte.devices.configure_cpu_threads``. The busy neighbour is a process
spinning on one core, as a browser or a second job would. Model: the demo's (flat, 128 wide,
4 layers); training steps of 16 x 256 bytes, compression of 4 KB in 16 rows.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import omnibyte  # noqa: E402,F401 (first: it sets OpenMP's spin before torch loads OpenMP)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, write_json  # noqa: E402

DEMO_MODEL = dict(hidden_size=128, num_layers=4, num_query_heads=4, num_key_value_heads=2)


def child(kind: str, threads: str, steps: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from omnibyte.models import build_model

    if threads == "after":
        from omnibyte.devices import configure_cpu_threads

        configure_cpu_threads()
    torch.manual_seed(0)
    model = build_model("flat", "tiny", **DEMO_MODEL)
    if kind == "train":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tokens = torch.randint(0, 256, (16, 256))

        def step() -> None:
            loss = model.loss(tokens, tokens)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        from omnibyte.apps.compress import compress

        data = bytes(torch.randint(97, 123, (4096,)).tolist())
        model.eval()

        def step() -> None:
            compress(data, model, chunk_size=256, batch_size=16)
    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / steps
    return {"seconds_per_step": seconds, "intra_threads": torch.get_num_threads(),
            "inter_threads": torch.get_num_interop_threads()}


def measure(kind: str, threads: str, busy: bool, steps: int) -> dict:
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        # before: GNU OpenMP's default spin count, which omnibyte/__init__ would otherwise lower
        env = {**os.environ, "GOMP_SPINCOUNT": "300000"} if threads == "before" else dict(os.environ)
        output = subprocess.run([sys.executable, __file__, "--child", kind, "--threads", threads,
                                 "--steps", str(steps)], capture_output=True, text=True, check=True,
                                env=env).stdout
    finally:
        if neighbour is not None:
            neighbour.kill()
    result = json.loads(output.strip().splitlines()[-1])
    unit = "train steps/s" if kind == "train" else "compress calls/s (4 KB)"
    return {"what": kind, "threads": threads, "neighbour": "busy" if busy else "idle",
            "per_second": 1.0 / result["seconds_per_step"], "unit": unit, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["train", "compress"])
    parser.add_argument("--threads", choices=["before", "after"], default="after")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.steps)))
        return
    rows = [measure(kind, threads, busy, args.steps)
            for kind in ("train", "compress") for busy in (False, True) for threads in ("before", "after")]
    print_table(rows, ["what", "neighbour", "threads", "intra_threads", "inter_threads", "per_second",
                       "seconds_per_step", "unit"])
    write_json(args.out, {"environment": describe_environment("cpu"), "command": " ".join(sys.argv),
                          "results": rows})


if __name__ == "__main__":
    main()
