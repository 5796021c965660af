"""Training MFU on one GPU through the real training path (``Trainer.train_step``: the parallel
layer, the task's loss, clipping, fused AdamW), setting by setting.

On the H200 (about 8 minutes in all, most of it compiling; it stops starting new settings when
``--budget`` seconds are spent and lists the rest as skipped):
    python bench/bench_mfu.py --out $OUT
CPU smoke test (tiny sizes, seconds):
    python bench/bench_mfu.py --preset tiny --seq-len 128 --batch 2 --steps 2 --warmup 1 \\
        --big-preset tiny --big-max-batch 4 --big-setting eager --settings eager,best-hd128 --out /tmp/mfu

Each setting runs in a process of its own (a crash, an OOM or a failed compile loses only that
row) and trains ``--preset`` (``base``) at ``--seq-len`` (8192) on random bytes for ``--steps``
timed steps after ``--warmup`` untimed ones (compilation happens there). The settings:

* ``eager``: no compile; ``compile``: the whole training module compiled (the default
  single-GPU path); ``compile-blocks``: each block compiled (torchtitan's way);
* ``cudnn`` / ``flash`` / ``efficient``: ``compile`` with one SDPA backend (``--attention-backend``);
* ``chunked-ce``: ``compile`` with the head and cross-entropy in chunks of ``--loss-chunk``
  positions (the [B, T, 256] float32 logits never whole);
* ``best``: ``compile`` + cuDNN + chunked cross-entropy;
* ``best-hd32`` / ``best-hd128`` / ``compile-hd32``: the same with another head layout of the
  same model size: `base` has 16 query heads of 64 dimensions (4 key/value heads); 32 x 32
  (8 kv, `base` before omnibyte 0.3) and 8 x 128 (2 kv) have exactly the same parameters and
  FLOPs; attention kernels run far closer to peak at head dimension 64 or 128 than at 32;
* ``fsdp``: FSDP2 on a 1-rank mesh (bf16 parameters, fp32 reduction), blocks compiled;
* ``ac-block`` / ``ac-selective``: ``compile`` with activation checkpointing.

Then ``--big-preset`` (``1b``) at the same context: the largest batch that fits is searched
eagerly (doubling from 1, then bisecting between the last fit and the first OOM: one step
each, no compile), then ``--big-setting`` is measured at that batch (or 3/4, 1/2 of it when the
compiled step needs more memory): its MFU and peak memory.

FLOPs follow ``model.flops_per_byte`` (PaLM convention: 6 x matmul parameters + 12 x layers x
hidden x context, attention not halved for causality); ``mfu_causal`` counts the attention
term halved, i.e. only the work a causal kernel does. Peak: ``--peak-tflops`` (989, dense bf16
of an H100/H200 SXM).
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's omnibyte
from common import H100_BF16_PEAK_FLOPS, describe_environment, print_table, time_steps, write_json  # noqa: E402

# other head layouts of the same model size (`base` has 16 query heads of 64, 4 key/value heads)
HEAD_DIM_32 = dict(num_query_heads=32, num_key_value_heads=8)  # `base` before omnibyte 0.3
HEAD_DIM_128 = dict(num_query_heads=8, num_key_value_heads=2)
SETTINGS: dict[str, dict[str, Any]] = {  # name -> TrainConfig fields (model: config overrides)
    "compile": dict(compile=True),
    "best": dict(compile=True, attention_backend="cudnn", loss_chunk=-1),
    "best-hd32": dict(compile=True, attention_backend="cudnn", loss_chunk=-1, model=HEAD_DIM_32),
    "best-hd128": dict(compile=True, attention_backend="cudnn", loss_chunk=-1, model=HEAD_DIM_128),
    "fsdp": dict(compile=True, parallel="fsdp"),
    "compile-hd32": dict(compile=True, model=HEAD_DIM_32),
    "cudnn": dict(compile=True, attention_backend="cudnn"),
    "chunked-ce": dict(compile=True, loss_chunk=-1),  # -1: --loss-chunk
    "flash": dict(compile=True, attention_backend="flash"),
    "compile-blocks": dict(compile=True, compile_mode="blocks"),
    "ac-selective": dict(compile=True, activation_checkpointing="selective"),
    "eager": dict(),
    "ac-block": dict(compile=True, activation_checkpointing="block"),
    "efficient": dict(compile=True, attention_backend="efficient"),
}
COLUMNS = ["model", "setting", "batch", "bytes_per_s", "tflops", "mfu", "mfu_causal", "peak_gib", "step_s",
           "warmup_s", "first_oom", "error"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8, help="windows per step of --preset")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--loss-chunk", type=int, default=8192)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="in the order they run")
    parser.add_argument("--big-preset", default="1b")
    parser.add_argument("--big-setting", default="best")
    parser.add_argument("--big-max-batch", type=int, default=64)
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds; no setting starts after this (the 1b search has its own share)")
    parser.add_argument("--big-share", type=float, default=0.4, help="share of --budget kept for --big-preset")
    parser.add_argument("--setting-timeout", type=float, default=200.0)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_FLOPS / 1e12)
    parser.add_argument("--out", type=Path, default=None, help="folder for mfu.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child: one JSON job
    return parser.parse_args(argv)


# ---- a child process: one setting (or the batch search) ------------------------------------

def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Train ``job['preset']`` with ``job['fields']`` at each batch of ``job['batches']`` until one
    fails; one row per batch."""
    import torch

    from omnibyte.data import ByteCorpus, Document
    from omnibyte.models import make_config, model_class_for
    from omnibyte.train import parallel
    from omnibyte.train.trainer import TrainConfig, Trainer

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch._dynamo.config.automatic_dynamic_shapes = False  # each batch of the search: static shapes
    torch._dynamo.config.cache_size_limit = 64
    fields = dict(job["fields"])
    compile_mode = fields.pop("compile_mode", None)
    overrides = dict(fields.pop("model", {}))
    if fields.get("loss_chunk") == -1:
        fields["loss_chunk"] = job["loss_chunk"]
    seq_len = job["seq_len"]
    if seq_len > make_config("flat", job["preset"]).max_sequence_length:
        overrides["max_sequence_length"] = seq_len
    config = make_config("flat", job["preset"], **overrides)
    model = parallel.build_on_meta(lambda: model_class_for("flat")(config))
    rng = torch.Generator().manual_seed(0)
    corpus = ByteCorpus([Document("random.bin", bytes(torch.randint(0, 256, (32 << 20,), dtype=torch.uint8,
                                                                     generator=rng).numpy().tobytes()))])
    rows, out_dir = [], tempfile.mkdtemp(prefix="bench_mfu_")
    if compile_mode == "blocks":  # the trainer compiles the whole module without FSDP; ask for blocks
        original = parallel.parallelize

        def blocks(*args, **kwargs):
            kwargs["compile_mode"] = "blocks"
            return original(*args, **kwargs)
        parallel.parallelize = blocks
    trainer = None
    if job.get("policy") == "search":
        return search_batch(job, model, corpus, fields, out_dir)
    for batch in job["batches"]:
        row: dict[str, Any] = {"model": job["preset"], "setting": job["name"], "batch": batch}
        rows.append(row)
        try:
            train_config = TrainConfig(seq_len=seq_len, batch_size=batch, steps=10**6, eval_every=0, save_every=0,
                                       warmup_steps=100, device="cuda" if torch.cuda.is_available() else "cpu",
                                       **fields)
            if trainer is None:
                trainer = Trainer(model, corpus, train_config, out_dir, progress=False)
            else:  # the same model, optimizer and compiled code; only the batch changes
                trainer.config = train_config
                trainer.sampler = trainer.task.train_batches(corpus, seq_len, batch, 0)
            row.update(measure(trainer, job, batch))
            if job.get("policy") == "first_fit":
                break
        except Exception as error:  # noqa: BLE001 - OOM or a backend that does not apply: recorded
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            if job.get("policy") != "first_fit":
                break
            if trainer is not None:
                trainer.optimizer.zero_grad(set_to_none=True)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def search_batch(job: dict[str, Any], model, corpus, fields: dict[str, Any], out_dir: str) -> list[dict[str, Any]]:
    """The largest batch whose (eager) training step fits: doubling, then bisection."""
    import gc

    import torch

    from omnibyte.train.trainer import TrainConfig, Trainer

    fields = {**fields, "compile": False}
    trainer = None
    peaks: dict[int, float | None] = {}

    def fits(batch: int) -> bool:
        nonlocal trainer
        config = TrainConfig(seq_len=job["seq_len"], batch_size=batch, steps=10**6, eval_every=0, save_every=0,
                             warmup_steps=100, device="cuda" if torch.cuda.is_available() else "cpu", **fields)
        if trainer is None:
            trainer = Trainer(model, corpus, config, out_dir, progress=False)
        trainer.config = config
        trainer.sampler = trainer.task.train_batches(corpus, job["seq_len"], batch, 0)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            trainer.train_step()
        except torch.OutOfMemoryError:
            trainer.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            return False
        peaks[batch] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        return True

    started = time.perf_counter()
    fitted, failed, batch = 0, None, 1
    while batch <= job["max_batch"]:
        if not fits(batch):
            failed = batch
            break
        fitted, batch = batch, batch * 2
    while failed is not None and failed - fitted > 1:
        middle = (fitted + failed) // 2
        if fits(middle):
            fitted = middle
        else:
            failed = middle
    return [{"model": job["preset"], "setting": "largest batch (eager)", "batch": fitted,
             "peak_gib": peaks.get(fitted), "first_oom": failed, "search_s": time.perf_counter() - started}]


def measure(trainer, job: dict[str, Any], batch: int) -> dict[str, Any]:
    import torch

    warmup_s, step_s = time_steps(trainer.train_step, job["warmup"], job["steps"])
    model, seq_len = trainer.model, job["seq_len"]
    bytes_per_s = batch * seq_len / step_s
    flops_per_byte = model.flops_per_byte(seq_len)
    causal = flops_per_byte - 6 * model.config.num_layers * model.config.hidden_size * seq_len
    peak = job["peak_tflops"] * 1e12
    on_gpu = torch.cuda.is_available()
    return {"bytes_per_s": bytes_per_s, "tflops": flops_per_byte * bytes_per_s / 1e12,
            "mfu": flops_per_byte * bytes_per_s / peak if on_gpu else None,
            "mfu_causal": causal * bytes_per_s / peak if on_gpu else None,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
            "step_s": step_s, "warmup_s": warmup_s, "parameters": model.num_parameters(),
            "flops_per_byte": flops_per_byte}


# ---- the parent: every setting in its own process, within the budget -------------------------

def spawn(job: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    base = {"model": job["preset"], "setting": job["name"], "batch": job["batches"][0]}
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "rows.json"
        env = {**os.environ, "RESULT_PATH": str(result)}
        try:
            done = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            rows = json.loads(result.read_text()) if result.exists() else []
            return rows + [{**base, "error": f"timed out after {timeout:.0f} s"}]
        if result.exists():
            return json.loads(result.read_text())
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [{**base, "error": f"exit {done.returncode}: {tail[0][:200]}"}]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one is not None:  # child
        rows = run_job(json.loads(args.one))
        Path(os.environ["RESULT_PATH"]).write_text(json.dumps(rows))
        return 0
    names = [name for name in args.settings.split(",") if name]
    unknown = [name for name in names + [args.big_setting] if name not in SETTINGS]
    if unknown:
        print(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    small_budget = args.budget * (1 - args.big_share)
    common = dict(seq_len=args.seq_len, steps=args.steps, warmup=args.warmup, loss_chunk=args.loss_chunk,
                  peak_tflops=args.peak_tflops)
    rows: list[dict[str, Any]] = []
    for name in names:
        left = small_budget - (time.monotonic() - started)
        if left <= 30:
            rows.append({"model": args.preset, "setting": name, "batch": args.batch, "error": "skipped (budget)"})
            continue
        job = {**common, "name": name, "preset": args.preset, "fields": SETTINGS[name], "batches": [args.batch]}
        rows += spawn(job, min(args.setting_timeout, left + 60))
        print_table(rows[-1:], COLUMNS)
    big = {**common, "preset": args.big_preset, "batches": [1]}
    left = args.budget - (time.monotonic() - started)
    search = spawn({**big, "name": "search", "fields": SETTINGS[args.big_setting], "policy": "search",
                    "max_batch": args.big_max_batch}, max(left, 60))
    rows += search
    largest = search[0].get("batch") if "error" not in search[0] else None
    fitted = []
    if largest:
        left = args.budget - (time.monotonic() - started)
        candidates = sorted({largest, max(1, largest * 3 // 4), max(1, largest // 2)}, reverse=True)
        big_rows = spawn({**big, "name": args.big_setting, "fields": SETTINGS[args.big_setting],
                          "policy": "first_fit", "batches": candidates}, max(left, 90) + 30)
        rows += big_rows
        fitted = [row for row in big_rows if "error" not in row]
    print_table(rows, COLUMNS, title=f"{args.preset} and {args.big_preset} at {args.seq_len} bytes of context")
    if fitted:
        largest = fitted[-1]
        print(f"\n{args.big_preset}: largest batch that fits {largest['batch']} "
              f"(MFU {largest['mfu'] or 0:.3f}, peak {largest['peak_gib'] or 0:.1f} GiB)")
    payload = {"environment": describe_environment(), "arguments": {k: str(v) for k, v in vars(args).items()},
               "rows": rows, "wall_s": time.monotonic() - started,
               "largest_big_batch": fitted[-1]["batch"] if fitted else None}
    if args.out:
        write_json(args.out / "mfu.json", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
