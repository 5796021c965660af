"""Probe: MFU of flat `base` at 8192 bytes by head layout and SDPA backend (compiled, bf16, batch 4).

Run on CUDA from the repo root: `python bench/probe_head_layout.py` (writes $OUT/probe_mfu.json, or
./probe_mfu.json). The head layouts keep the model's size: 32 x 32, 16 x 64 and 8 x 128 query heads
(with a quarter as many key-value heads) all have 1024-wide attention.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench_flat import guarded, sdpa_context  # noqa: E402
from common import H100_BF16_PEAK_FLOPS, peak_memory_gib, print_table, reset_peak_memory, time_call  # noqa: E402

from omnibyte.devices import autocast  # noqa: E402
from omnibyte.models import build_model  # noqa: E402
from omnibyte.models.base import masked_cross_entropy  # noqa: E402

# (preset, query heads, key-value heads, SDPA backend, batch); None keeps the preset's heads
PLAN = [("base", 32, 8, "auto", 4), ("base", 32, 8, "cudnn", 4), ("base", 16, 4, "auto", 4),
        ("base", 16, 4, "cudnn", 4), ("base", 8, 2, "auto", 4), ("base", 8, 2, "cudnn", 4),
        ("base", 8, 2, "cudnn", 8), ("1b", None, None, "cudnn", 4), ("1b", None, None, "auto", 4)]


def measure(preset: str, query_heads: int | None, kv_heads: int | None, sdpa: str, batch: int,
            seq_len: int = 8192, steps: int = 8, warmup: int = 3) -> dict:
    torch.manual_seed(0)
    device = torch.device("cuda")
    heads = {} if query_heads is None else {"num_query_heads": query_heads, "num_key_value_heads": kv_heads}
    model = build_model("flat", preset, **heads).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model, dynamic=False)
    tokens = torch.randint(0, 256, (batch, seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def train_step() -> None:
        with sdpa_context(sdpa), autocast(device):
            loss = masked_cross_entropy(forward(inputs), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    time_call(train_step, repeats=warmup, device=device)
    warmup_s = time.perf_counter() - started
    reset_peak_memory(device)
    seconds = time_call(train_step, repeats=steps, device=device)
    bytes_per_s = batch * seq_len / seconds
    config = model.config
    flops_per_byte = model.flops_per_byte(seq_len)
    causal_flops_per_byte = flops_per_byte - 6 * config.num_layers * config.hidden_size * seq_len
    return {"head_dim": config.hidden_size // config.num_query_heads, "bytes_per_s": bytes_per_s,
            "mfu": flops_per_byte * bytes_per_s / H100_BF16_PEAK_FLOPS,
            "mfu_causal": causal_flops_per_byte * bytes_per_s / H100_BF16_PEAK_FLOPS,
            "peak_gib": peak_memory_gib(device), "warmup_s": warmup_s, "params": model.num_parameters()}


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for preset, query_heads, kv_heads, sdpa, batch in PLAN:
        row = {"preset": preset, "q": query_heads, "kv": kv_heads, "sdpa": sdpa, "batch": batch}
        rows.append(guarded(lambda: measure(preset, query_heads, kv_heads, sdpa, batch), row))
        print(rows[-1], flush=True)
    print_table(rows, ["preset", "q", "kv", "head_dim", "sdpa", "batch", "bytes_per_s", "mfu", "mfu_causal",
                       "peak_gib", "warmup_s", "error"])
    Path(os.environ.get("OUT", "."), "probe_mfu.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
