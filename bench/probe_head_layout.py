"""Probe: MFU of flat `base` at 8192 bytes by head layout and SDPA backend (compiled, bf16, batch 4).

Run on CUDA from the repo root: `python bench/probe_head_layout.py` (writes $OUT/probe_mfu.json, or
./probe_mfu.json). The head layouts keep the model's size: 32 x 32, 16 x 64 and 8 x 128 query heads
(with a quarter as many key-value heads) all have 1024-wide attention. The measurement is
``bench_flat.measure_training`` (forward, backward, clipping, fused AdamW).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench_flat import guarded, measure_training  # noqa: E402
from common import print_table  # noqa: E402

# (preset, query heads, key-value heads, SDPA backend, batch); None keeps the preset's heads
PLAN = [("base", 32, 8, "auto", 4), ("base", 32, 8, "cudnn", 4), ("base", 16, 4, "auto", 4),
        ("base", 16, 4, "cudnn", 4), ("base", 8, 2, "auto", 4), ("base", 8, 2, "cudnn", 4),
        ("base", 8, 2, "cudnn", 8), ("1b", None, None, "cudnn", 4), ("1b", None, None, "auto", 4)]


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    rows = []
    for preset, query_heads, kv_heads, sdpa, batch in PLAN:
        heads = {} if query_heads is None else {"num_query_heads": query_heads, "num_key_value_heads": kv_heads}
        row = {"preset": preset, "q": query_heads, "kv": kv_heads, "sdpa": sdpa, "batch": batch}
        rows.append(guarded(lambda: measure_training(preset, 8192, batch, 8, 3, True, sdpa, device, heads), row))
        print(rows[-1], flush=True)
    print_table(rows, ["preset", "q", "kv", "sdpa", "batch", "bytes_per_s", "mfu", "mfu_causal", "peak_gib",
                       "warmup_s", "error"])
    Path(os.environ.get("OUT", "."), "probe_mfu.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
