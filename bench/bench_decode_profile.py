"""Where a batch-1 decoding step's time goes (issue 13): the GPU, or the host between steps.

For each preset and decoding path it measures, with bf16 weights after a short prompt:
* ``graph_replay_ms``: replaying the captured step back to back (no Python between kernels);
  the GPU's own time per step;
* ``step_call_ms``: ``decoder.step(tokens)`` back to back, the host's per-step work included;
* ``host_issue_ms``: the host's time to issue one step call (timed without waiting for the GPU);
* ``generate_ms``: ``model.generate`` per byte (sampling and the byte's trip to the host);
* from ``torch.profiler`` over replayed steps: kernels per step and GPU kernel time per step,
  by kind, plus the top kernels (``--out`` folder, ``profile_<preset>_<path>.txt``).

With ``--rounds``, the same for one round of speculation on the device (``DeviceRounds``: the
drafting, the 9-wide verify call, greedy acceptance), after a repetitive 256-byte prompt:
``round_replay_ms`` and the round's kernels (``profile_<preset>_<path>_round.txt``).

    python bench/bench_decode_profile.py --presets small,base --out runs/decode_profile [--rounds]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    describe_environment, gpu_kernels, kernel_time_by_kind, print_table, synchronize, time_call, write_json,
)

from omnibyte.models import BOS, build_model  # noqa: E402

PATHS = {"fast": dict(fast=True), "compiled": dict(fast=True, compile=True)}


def timed_ms(fn, count: int, device: torch.device) -> float:
    return 1e3 * time_call(fn, repeats=count, device=device)


def profile_replays(replay, count: int, out: Path, name: str) -> dict:
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(count):
            replay()
        torch.cuda.synchronize()
    kinds, launches = kernel_time_by_kind(prof)
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=90)
    (out / f"profile_{name}.txt").write_text(table)
    durations = sorted(((event.time_range.end - event.time_range.start), event.name) for event in gpu_kernels(prof))
    return {"kernels_per_step": launches / count,
            "kernel_us_per_step": 1e6 * sum(kinds.values()) / count,
            **{f"us_{kind.split(' ')[0]}": 1e6 * seconds / count for kind, seconds in kinds.items()},
            "median_kernel_us": durations[len(durations) // 2][0] if durations else None}


def measure(preset: str, path: str, args, device: torch.device, out: Path) -> dict:
    torch.manual_seed(0)
    model = build_model("flat", preset).to(device=device, dtype=torch.bfloat16).eval()
    capacity = args.prompt_bytes + 1 + args.new_bytes
    started = time.perf_counter()
    decoder = model.decoder(1, capacity, **PATHS[path])
    build_s = time.perf_counter() - started
    prompt = torch.randint(0, 256, (1, args.prompt_bytes + 1), device=device)
    prompt[:, 0] = BOS
    tokens = torch.randint(0, 256, (1,), device=device)
    row = {"preset": preset, "path": path, "build_s": build_s}

    def fresh() -> None:
        decoder.reset()
        decoder.prefill(prompt)

    fresh()
    graph = decoder.steps.graphs.get("step")
    steps = args.new_bytes - 8
    if graph is not None:
        graph.replay()  # warm
        row["graph_replay_ms"] = timed_ms(graph.replay, steps, device)
        row["graph_bytes_per_s"] = 1e3 / row["graph_replay_ms"]
    fresh()
    row["step_call_ms"] = timed_ms(lambda: decoder.step(tokens), steps, device)
    fresh()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(min(steps, 64)):
        decoder.step(tokens)
    row["host_issue_ms"] = 1e3 * (time.perf_counter() - started) / min(steps, 64)
    synchronize(device)
    text = bytes(prompt[0, 1:].tolist())
    options = PATHS[path]
    model.generate(text, 16, seed=0, **options)
    started = time.perf_counter()
    model.generate(text, args.new_bytes, seed=0, **options)
    row["generate_ms"] = 1e3 * (time.perf_counter() - started) / args.new_bytes
    row["generate_bytes_per_s"] = 1e3 / row["generate_ms"]
    if graph is not None and device.type == "cuda":
        fresh()
        row.update(profile_replays(graph.replay, 20, out, f"{preset}_{path}"))
    return row


ROUND_PROMPT = (b"the quick brown fox jumps over the lazy dog. " * 8)[:256]


def measure_round(preset: str, path: str, args, device: torch.device, out: Path) -> dict:
    """One greedy round of speculation on the device, replayed: its time and its kernels."""
    from omnibyte.models.speculative import MAX_DRAFT, DeviceRounds  # noqa: PLC0415

    torch.manual_seed(0)
    model = build_model("flat", preset).to(device=device, dtype=torch.bfloat16).eval()
    replays = 64  # warm-up, timing and profile together: at most this many rounds run
    new_bytes = (MAX_DRAFT + 1) * (replays + 8)
    decoder = model.decoder(1, len(ROUND_PROMPT) + 1 + new_bytes, **PATHS[path])
    tokens = torch.tensor([[BOS, *ROUND_PROMPT]], device=device)

    def greedy(logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return logits.float().argmax(dim=-1)

    started = time.perf_counter()
    rounds = DeviceRounds(decoder, [ROUND_PROMPT], greedy(decoder.prefill(tokens), None), new_bytes, greedy,
                          torch.zeros(1, dtype=torch.long, device=device), noisy=False)
    row = {"preset": preset, "path": f"{path} round", "build_s": time.perf_counter() - started}
    graph = decoder.steps.graphs.get("round")
    replay = graph.replay if graph is not None else (lambda: decoder.run_piece("round"))
    replay()  # warm
    row["graph_replay_ms"] = timed_ms(replay, 32, device)
    replayed = 1 + 32
    if graph is not None and device.type == "cuda":
        row.update(profile_replays(replay, 20, out, f"{preset}_{path}_round"))
        replayed += 20
    row["bytes_per_round"] = (float(rounds.produced.sum()) - 1) / replayed  # the first byte came from the prefill
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small,base")
    parser.add_argument("--paths", default="fast,compiled")
    parser.add_argument("--prompt-bytes", type=int, default=16)
    parser.add_argument("--new-bytes", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", action="store_true", help="also one round of speculation on the device")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    rows = []
    for preset in args.presets.split(","):
        for path in args.paths.split(","):
            for what in [measure, measure_round] if args.rounds else [measure]:
                try:
                    rows.append(what(preset, path, args, device, args.out))
                except Exception as error:  # noqa: BLE001 - report it, measure the rest
                    rows.append({"preset": preset, "path": path, "error": f"{type(error).__name__}: {error}"})
                print(rows[-1], flush=True)
    columns = ["preset", "path", "build_s", "graph_replay_ms", "step_call_ms", "host_issue_ms", "generate_ms",
               "generate_bytes_per_s", "kernels_per_step", "kernel_us_per_step", "median_kernel_us", "bytes_per_round"]
    print_table(rows, columns, title="batch-1 decoding: where a step's time goes")
    write_json(args.out / "decode_profile.json", {"environment": describe_environment(device),
                                                  "command": " ".join(sys.argv), "rows": rows})


if __name__ == "__main__":
    main()
