"""Every registered family's decoder against its full forward, on the machine at hand.

The CPU suite (tests/test_conformance.py) checks the same thing with the graph bodies run
eagerly; this runs it where CUDA graphs are really captured and replayed:

    python bench/check_decoders.py --out bench/results/decoders_cuda.json

For each family (``tiny`` presets plus variants) and path (eager, fast): the largest
|decoder logit - forward logit| over ragged prompts and steps (float32), whether CUDA graphs were
captured, and whether batched greedy generation equals one-by-one generation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, write_json  # noqa: E402

from omnibyte.models import ARCHITECTURES, BOS, build_model  # noqa: E402

VARIANTS = {**{arch: (arch, "tiny", {}) for arch in ARCHITECTURES},
            "multiscale-3": ("multiscale", "tiny-3", {}), "multiscale-mamba": ("multiscale", "tiny-mamba", {})}
LENGTHS = [7, 1, 13]


def check(name: str, fast: bool, device: torch.device) -> dict:
    arch, preset, overrides = VARIANTS[name]
    torch.manual_seed(0)
    model = build_model(arch, preset, **overrides).to(device).eval()
    tokens = torch.randint(0, 256, (3, 64), generator=torch.Generator().manual_seed(1)).to(device)
    tokens[:, 0] = BOS
    with torch.no_grad():
        full = model(tokens)
        decoder = model.decoder(3, 64, fast=fast)
        logits = decoder.prefill(tokens[:, :max(LENGTHS)], LENGTHS)
        worst = max((logits[row] - full[row, length - 1]).abs().max().item() for row, length in enumerate(LENGTHS))
        for k in range(64 - max(LENGTHS)):
            column = torch.stack([tokens[row, length + k] for row, length in enumerate(LENGTHS)])
            logits = decoder.step(column)
            expected = torch.stack([full[row, length + k] for row, length in enumerate(LENGTHS)])
            worst = max(worst, (logits - expected).abs().max().item())
    prompts = [b"def f(x):", b"", b"abc"]
    batched = model.generate(prompts, 32, temperature=0, fast=fast)
    alone = [model.generate(prompt, 32, temperature=0, fast=fast) for prompt in prompts]
    return {"family": name, "path": "fast" if fast else "eager", "max_abs_diff": worst,
            "graphs": decoder.steps.use_graph, "graph_error": decoder.steps.error,
            "batched_equals_alone": batched == alone}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [check(name, fast, device) for name in VARIANTS for fast in (False, True)]
    print_table(rows, ["family", "path", "max_abs_diff", "graphs", "batched_equals_alone", "graph_error"])
    if args.out:
        write_json(args.out, {"environment": describe_environment(device), "command": " ".join(sys.argv),
                              "results": rows})


if __name__ == "__main__":
    main()
