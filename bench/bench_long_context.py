"""Long contexts in the multiscale family: one training step at 16M-64M bytes, where its time
goes, and whether a model trained at a long context uses it.

    python bench/bench_long_context.py steps --contexts 16M,32M,64M --out DIR
        one forward + backward step (batch 1, bf16 autocast) of the ``long-context`` preset per
        context, each in a fresh process (a crash cannot take the others down): seconds, bytes/s,
        peak GiB against ``training_memory``'s estimate. ``--unbounded`` turns the kernel-bound
        pieces off (the code before the fix); ``--checkpoint-tokens`` sets the pieces' size.
    python bench/bench_long_context.py profile --context 4M --out DIR
        where a step's time goes: forward time per stage, kernel time by kind, launches.
    python bench/bench_long_context.py context-use --data linux-6.1-core.tar.xz --out DIR
        trains a multiscale model with a 16M context on the Linux tarball read as one stream
        (its last 16 MiB held out), then test bits/byte on that stretch at contexts of 64K, 1M
        and 16M bytes.

Every mode prints a table and writes JSON into --out.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, kernel_time_by_kind, print_table, synchronize, write_json  # noqa: E402

from omnibyte.devices import autocast, check_training_fits  # noqa: E402
from omnibyte.errors import OmnibyteError  # noqa: E402
from omnibyte.models.multiscale import core  # noqa: E402
from omnibyte.models.registry import make_config, model_class_for  # noqa: E402

SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30}


def parse_size(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * SUFFIXES[text[-1]] if text[-1] in SUFFIXES else int(text)


def build(preset: str, context: int, checkpoint_tokens: int | None, device: torch.device, **stage_changes):
    """The preset with stage 0's patch stretched so that the context is ``context`` bytes."""
    config = make_config("multiscale", preset).to_dict()
    inner = math.prod(stage["patch_size"] for stage in config["stages"][1:])
    config["stages"][0] = dict(config["stages"][0], patch_size=context // inner, **stage_changes)
    if checkpoint_tokens is not None:
        config["checkpoint_tokens"] = checkpoint_tokens
    model_class = model_class_for("multiscale")
    with torch.device("meta"):
        model = model_class(model_class.config_class.from_dict(config))
    model = model.to_empty(device=device)
    model.init_weights()
    return model


def one_step(args: argparse.Namespace) -> dict:
    """One fwd+bwd step at ``args.context``; the row the parent collects."""
    device = torch.device(args.device)
    if args.unbounded:  # the code before the fix: every piece as large as the sequence
        core.KERNEL_ELEMENT_LIMIT = core.KERNEL_ROW_LIMIT = 2**62
    row = {"context": args.context, "checkpoint_tokens": args.checkpoint_tokens, "unbounded": args.unbounded,
           "compile": args.compile}
    model = build(args.preset, args.context, args.checkpoint_tokens, device)
    estimate = model.training_memory(1, args.context, optimizer=False)
    row.update(params=model.num_parameters(), estimate_gib=estimate / 2**30)
    try:
        check_training_fits(estimate, device, f"1 x {args.context:,} bytes")
    except OmnibyteError as refused:
        return dict(row, fits=False, refused=str(refused))
    if args.compile:
        for stack in model.core.stacks:
            for layer in stack.layers:
                layer.compile()
    model.train()
    warm = torch.randint(0, 256, (1, min(args.context, 2**18)), device=device)
    with autocast(device):  # warm-up: kernels, cuBLAS handles (and compilation) outside the timing
        model.loss(warm, warm).backward()
    model.zero_grad(set_to_none=True)
    ids = torch.randint(0, 256, (1, args.context), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize()
    started = time.perf_counter()
    with autocast(device):
        loss = model.loss(ids, ids)
    loss.backward()
    synchronize()
    seconds = time.perf_counter() - started
    return dict(row, fits=True, seconds=seconds, bytes_per_s=args.context / seconds,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
                loss=float(loss))


def steps(args: argparse.Namespace) -> None:
    """``--sweep``: first a step at ``--sweep-context`` per checkpoint_tokens value; the fastest
    that fits then runs the ``--contexts``."""
    rows = []
    sweep = [int(tokens) for tokens in args.sweep.split(",")] if args.sweep else []
    plan = [(parse_size(args.sweep_context), tokens) for tokens in sweep]
    plan += [(parse_size(text), None) for text in args.contexts.split(",")]
    for index, (context, checkpoint_tokens) in enumerate(plan):
        if sweep and index == len(sweep):
            timed = [row for row in rows if row.get("seconds")]
            if timed:
                args.checkpoint_tokens = min(timed, key=lambda row: row["seconds"])["checkpoint_tokens"]
                print(f"fastest checkpoint_tokens: {args.checkpoint_tokens}", flush=True)
        if index >= len(sweep):
            checkpoint_tokens = args.checkpoint_tokens
        command = [sys.executable, __file__, "one-step", "--context", str(context), "--preset", args.preset,
                   "--device", args.device]
        if checkpoint_tokens is not None:
            command += ["--checkpoint-tokens", str(checkpoint_tokens)]
        command += ["--unbounded"] * args.unbounded + ["--compile"] * args.compile
        env = dict(__import__("os").environ, **({"CUDA_LAUNCH_BLOCKING": "1"} if args.launch_blocking else {}))
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            row = json.loads(lines[-1]) if done.returncode == 0 and lines else {
                "context": context, "checkpoint_tokens": checkpoint_tokens, "fits": False, "crashed": True,
                "error": "\n".join(done.stderr.strip().splitlines()[-6:])}
        except subprocess.TimeoutExpired:
            row = {"context": context, "fits": None, "error": f"timed out after {args.timeout} s"}
        row["process_s"] = time.perf_counter() - started
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_json(Path(args.out) / f"steps{args.tag}.json", {"environment": describe_environment("cuda"),
                                                              "command": " ".join(sys.argv), "rows": rows})
    print_table(rows, ["context", "fits", "seconds", "bytes_per_s", "peak_gib", "estimate_gib", "checkpoint_tokens",
                       "unbounded", "compile"])


def profile(args: argparse.Namespace) -> None:
    """Forward time per stage (CUDA events, the training pieces), then the whole step under the
    profiler: GPU-busy time against wall time, and kernel time by kind."""
    device = torch.device(args.device)
    model = build(args.preset, args.context, args.checkpoint_tokens, device)
    model.train()
    ids = torch.randint(0, 256, (1, args.context), device=device)
    with autocast(device):
        model.loss(ids, ids).backward()  # warm-up
    model.zero_grad(set_to_none=True)
    model_core = model.core
    stage_seconds = {}
    with torch.no_grad(), autocast(device):
        units = ids.view(1, -1, model_core.unit_sizes[0])
        for name, function in [("stage 0 (embedding + stack)", lambda: model_core._run_top(units)),
                               ("all stages above the bytes", lambda: model_core.parent_outputs(ids)),
                               ("forward with loss (all stages, head)", lambda: model.loss(ids, ids))]:
            synchronize()
            started = time.perf_counter()
            function()
            synchronize()
            stage_seconds[name] = time.perf_counter() - started
    from torch.profiler import ProfilerActivity, profile as torch_profile

    synchronize()
    started = time.perf_counter()
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    with torch_profile(activities=activities) as prof:
        with autocast(device):
            model.loss(ids, ids).backward()
        synchronize()
    wall = time.perf_counter() - started
    kinds, launches = kernel_time_by_kind(prof)
    busy = sum(kinds.values())
    rows = [{"part": name, "seconds": value} for name, value in stage_seconds.items()]
    rows += [{"part": f"step kernels: {kind}", "seconds": value, "share": value / busy}
             for kind, value in sorted(kinds.items(), key=lambda item: -item[1])]
    rows += [{"part": "step: GPU busy (kernels)", "seconds": busy, "share": busy / wall},
             {"part": "step: wall (profiled)", "seconds": wall}]
    print_table(rows, ["part", "seconds", "share"], title=f"where a {args.context:,}-byte step goes")
    top = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "profile_top_kernels.txt").write_text(top)
    write_json(Path(args.out) / "profile.json", {"environment": describe_environment(device), "command": " ".join(sys.argv),
                                                "context": args.context, "kernel_launches": launches, "rows": rows})


# the context-use model: 16M context (65,536 x 32 x 8), narrower than long-context so that a few
# minutes of training take enough steps
CONTEXT_USE_STAGES = [dict(patch_size=65536, hidden_size=512, num_layers=6, num_query_heads=8, num_key_value_heads=8),
                      dict(patch_size=32, hidden_size=512, num_layers=4, num_query_heads=8, num_key_value_heads=8),
                      dict(patch_size=8, hidden_size=256, num_layers=4, num_query_heads=4, num_key_value_heads=4)]


# --smoke: the same run in miniature on the CPU (a check of the script, not a measurement)
SMOKE_STAGES = [dict(patch_size=64, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=2),
                dict(patch_size=4, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=2),
                dict(patch_size=4, hidden_size=16, num_layers=1, num_query_heads=2, num_key_value_heads=2)]


def context_use(args: argparse.Namespace) -> None:
    from omnibyte.data.corpus import ByteCorpus
    from omnibyte.train.trainer import Trainer, TrainConfig

    device = torch.device(args.device)
    stages, contexts = ((SMOKE_STAGES, (64, 256, 1024)) if args.smoke else
                        (CONTEXT_USE_STAGES, (2**16, 2**20, 2**24)))
    corpus = ByteCorpus.from_paths([args.data])
    held_out = parse_size(args.held_out)
    train_corpus = corpus.byte_range(0, corpus.num_bytes - held_out)
    stretch = torch.from_numpy(corpus.read(corpus.num_bytes - held_out, held_out).astype("int64"))
    model_class = model_class_for("multiscale")
    config = model_class.config_class.from_dict(dict(stages=stages))
    torch.manual_seed(0)
    model = model_class(config)
    report = {"environment": describe_environment(device), "command": " ".join(sys.argv),
              "params": model.num_parameters(), "stream_bytes": corpus.num_bytes, "held_out_bytes": held_out,
              "phases": []}
    out = Path(args.out)
    # Three phases through the trainer. Most steps go to short sequences: a model first has to
    # learn the local statistics, and neither 50 steps of 4 x 1M bytes nor 240 of 16 x 64K got it
    # past the unigram entropy (bench/RESULTS.md), where GCIDE needed about 1,500 steps of 64K
    # bytes. Then 1M and whole 16M contexts, so that stage 0 meets positions over the full range.
    # Only the 16M phase needs its activations recomputed in pieces.
    # (name, seq_len = contexts[i], batch, planned steps (sets the schedule), minutes, lr, checkpoint_tokens)
    plan = [("short", contexts[0], 2, 1500, args.minutes_short, 2e-3, 0),
            ("mid", contexts[1], 2, 60, args.minutes_mid, 1e-3, 0),
            ("long", contexts[2], 1, 6, args.minutes_long, 5e-4, contexts[0])]
    for name, seq_len, batch_size, steps, minutes, lr, checkpoint_tokens in plan:
        model.config.checkpoint_tokens = checkpoint_tokens
        train = TrainConfig(seq_len=seq_len, batch_size=batch_size, steps=steps, lr=lr, warmup_steps=5,
                            eval_every=0, save_every=0, time_limit=minutes * 60, device=args.device, log_every=5)
        started = time.perf_counter()
        trainer = Trainer(model, train_corpus, train, out / f"run-{name}", progress=False)
        result = trainer.fit()
        model = trainer.model
        report["phases"].append({"phase": name, "seq_len": seq_len, "batch_size": batch_size, "steps": trainer.step,
                                 "seconds": time.perf_counter() - started,
                                 "train_bits_per_byte": result.train_bits_per_byte})
        print(report["phases"][-1], flush=True)
    model.eval()
    rows = []
    for context in contexts:
        windows = stretch[: held_out // context * context].view(-1, context)
        total_nats, total_bytes = 0.0, 0
        started = time.perf_counter()
        with torch.no_grad(), autocast(device):
            for window in windows.split(max(1, contexts[-1] // context)):
                window = window.to(device)
                tokens = torch.cat([torch.full_like(window[:, :1], 256), window[:, :-1]], dim=1)
                loss = model.loss(tokens, window)
                total_nats += float(loss) * window.numel()
                total_bytes += window.numel()
        rows.append({"context": context, "windows": windows.shape[0], "bits_per_byte": total_nats / total_bytes / math.log(2),
                     "seconds": time.perf_counter() - started})
        print(rows[-1], flush=True)
    report["rows"] = rows
    print_table(rows, ["context", "windows", "bits_per_byte", "seconds"],
                title=f"test bits/byte on the last {held_out:,} bytes of the stream")
    write_json(out / "context_use.json", report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("steps", "one-step", "profile", "context-use"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", default="bench/results/long_context")
        sub.add_argument("--preset", default="long-context")
        sub.add_argument("--checkpoint-tokens", type=int, default=None)
        sub.add_argument("--device", default="cuda")
    commands.choices["steps"].add_argument("--contexts", default="16M,32M,64M")
    commands.choices["steps"].add_argument("--timeout", type=float, default=560)
    commands.choices["steps"].add_argument("--launch-blocking", action="store_true")
    commands.choices["steps"].add_argument("--tag", default="")
    commands.choices["steps"].add_argument("--sweep", default="", help="checkpoint_tokens values to compare first")
    commands.choices["steps"].add_argument("--sweep-context", default="2M")
    for name in ("steps", "one-step"):
        commands.choices[name].add_argument("--unbounded", action="store_true")
        commands.choices[name].add_argument("--compile", action="store_true")
    commands.choices["one-step"].add_argument("--context", type=int, required=True)
    commands.choices["profile"].add_argument("--context", type=parse_size, default=2**22)
    commands.choices["context-use"].add_argument("--data", required=True)
    commands.choices["context-use"].add_argument("--held-out", default="16M")
    commands.choices["context-use"].add_argument("--minutes-short", type=float, default=2.75)
    commands.choices["context-use"].add_argument("--minutes-mid", type=float, default=1.75)
    commands.choices["context-use"].add_argument("--minutes-long", type=float, default=1.5)
    commands.choices["context-use"].add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.command == "one-step":
        print(json.dumps(one_step(args)), flush=True)
    else:
        {"steps": steps, "profile": profile, "context-use": context_use}[args.command](args)


if __name__ == "__main__":
    main()
