"""Probe: MFU of flat `base` at 8192 bytes by head layout and SDPA backend (compiled, bf16, batch 4).

Run on CUDA from the repo root: `python bench/probe_head_layout.py` (writes $OUT/probe_mfu.json, or ./).
"""
import json, os, sys, time
sys.path.insert(0, "bench")
import torch
from bench_flat import sdpa_context, guarded
from common import time_call, reset_peak_memory, peak_memory_gib, H100_BF16_PEAK_FLOPS, print_table
from omnibyte.models import build_model
from omnibyte.models.base import masked_cross_entropy
from omnibyte.devices import autocast

def run(preset, q, kv, sdpa, batch, seq_len=8192, steps=8, warmup=3):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    over = {} if q is None else {"num_query_heads": q, "num_key_value_heads": kv}
    model = build_model("flat", preset, **over).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fwd = torch.compile(model, dynamic=False)
    tok = torch.randint(0, 256, (batch, seq_len + 1), device=dev)
    x, y = tok[:, :-1].contiguous(), tok[:, 1:].contiguous()
    def step():
        with sdpa_context(sdpa), autocast(dev):
            loss = masked_cross_entropy(fwd(x), y)
        loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
    t = time.perf_counter(); time_call(step, repeats=warmup, device=dev); w = time.perf_counter() - t
    reset_peak_memory(dev)
    s = time_call(step, repeats=steps, device=dev)
    bps = batch * seq_len / s
    c = model.config
    fpb = model.flops_per_byte(seq_len)
    causal = fpb - 6 * c.num_layers * c.hidden_size * seq_len
    return {"head_dim": c.hidden_size // c.num_query_heads, "bytes_per_s": bps, "mfu": fpb * bps / H100_BF16_PEAK_FLOPS,
            "mfu_causal": causal * bps / H100_BF16_PEAK_FLOPS, "peak_gib": peak_memory_gib(dev), "warmup_s": w, "params": model.num_parameters()}

torch.backends.cuda.matmul.allow_tf32 = True
rows = []
plan = [("base", 32, 8, "auto", 4), ("base", 32, 8, "cudnn", 4), ("base", 16, 4, "auto", 4), ("base", 16, 4, "cudnn", 4),
        ("base", 8, 2, "auto", 4), ("base", 8, 2, "cudnn", 4), ("base", 8, 2, "cudnn", 8), ("1b", None, None, "cudnn", 4), ("1b", None, None, "auto", 4)]
for preset, q, kv, sdpa, b in plan:
    row = {"preset": preset, "q": q, "kv": kv, "sdpa": sdpa, "batch": b}
    print(row, file=sys.stderr, flush=True)
    rows.append(guarded(lambda: run(preset, q, kv, sdpa, b), row))
    print(rows[-1], flush=True)
print_table(rows, ["preset", "q", "kv", "head_dim", "sdpa", "batch", "bytes_per_s", "mfu", "mfu_causal", "peak_gib", "warmup_s", "error"])
json.dump(rows, open(os.path.join(os.environ.get("OUT", "."), "probe_mfu.json"), "w"), indent=1)
try:
    torch.nn.attention.activate_flash_attention_impl("FA3")
    row = {"preset": "base", "q": 8, "kv": 2, "sdpa": "flash+FA3", "batch": 4}
    rows.append(guarded(lambda: run("base", 8, 2, "flash", 4), row)); print(rows[-1], flush=True)
except Exception as e:
    print("FA3 unavailable:", type(e).__name__, str(e)[:200], flush=True)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "."), "probe_mfu.json"), "w"), indent=1)
