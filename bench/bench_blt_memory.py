"""What BLT's gated patch memory (``latent.memory_slots``) does: a recall task on the CPU.

Each row: a random 6-letter key, filler text, then ``KEY=`` and the key again. With a windowed
latent (``latent.window`` patches) and windowed local layers, the repeated key is out of reach
of attention; only the memory can carry it. Same tiny model and steps with and without memory
slots; reported: bits/byte on the repeated key's letters (where the memory can help) and on
the filler (where it should not hurt).

    python bench/bench_blt_memory.py --out runs/blt-memory
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, write_json  # noqa: E402

from omnibyte.models import build_model  # noqa: E402
from omnibyte.models.base import BOS  # noqa: E402

WORDS = b"the quick brown fox jumps over lazy dog and cat runs far away from home".split()
KEY_LETTERS = 6


def make_rows(count: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``length`` bytes and a mask of the repeated key's letters."""
    rows, masks = [], []
    for _ in range(count):
        key = bytes(rng.integers(ord("a"), ord("z") + 1, KEY_LETTERS).tolist())
        tail = b" KEY=" + key + b"."
        filler = bytearray()
        while len(filler) < length - len(key) - len(tail) - 1:
            filler += WORDS[rng.integers(len(WORDS))] + b" "
        row = key + b" " + bytes(filler[: length - len(key) - len(tail) - 1]) + tail
        mask = np.zeros(length, bool)
        mask[length - 1 - KEY_LETTERS : length - 1] = True
        rows.append(np.frombuffer(row, np.uint8))
        masks.append(mask)
    return np.stack(rows).astype(np.int64), np.stack(masks)


def bits(model, rows: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    targets = torch.from_numpy(rows)
    tokens = torch.cat([torch.full((len(rows), 1), BOS), targets[:, :-1]], dim=1)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(tokens).float(), -1).gather(-1, targets.unsqueeze(-1))[..., 0]
    nats = -log_probs.numpy()
    filler = np.zeros_like(mask)
    filler[:, KEY_LETTERS + 1 : -KEY_LETTERS - 6] = True
    return float(nats[mask].mean() / np.log(2)), float(nats[filler].mean() / np.log(2))


def train(slots: int, args) -> dict:
    torch.manual_seed(args.seed)
    model = build_model("blt", "tiny", max_sequence_length=args.length + 1,
                        patching=dict(scheme="fixed", stride=4, max_patch_size=4),
                        local=dict(window=8), latent=dict(window=args.latent_window, memory_slots=slots))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    model.train()
    for _ in range(args.steps):
        rows, _ = make_rows(args.batch_size, args.length, rng)
        targets = torch.from_numpy(rows)
        tokens = torch.cat([torch.full((len(rows), 1), BOS), targets[:, :-1]], dim=1)
        loss = model.loss(tokens, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_rows, test_mask = make_rows(256, args.length, np.random.default_rng(10_000 + args.seed))
    key_bits, filler_bits = bits(model, test_rows, test_mask)
    return {"memory_slots": slots, "params": model.num_parameters(), "steps": args.steps,
            "seconds": round(time.time() - started, 1), "key_bits_per_byte": key_bits,
            "filler_bits_per_byte": filler_bits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--latent-window", type=int, default=4)
    parser.add_argument("--slots", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [train(slots, args) for slots in args.slots]
    print_table(rows, ["memory_slots", "params", "steps", "seconds", "key_bits_per_byte", "filler_bits_per_byte"],
                title=f"recall of a {KEY_LETTERS}-letter key {args.length} bytes back "
                      f"(latent window {args.latent_window} patches of 4, local window 8; random: 4.70 bits)")
    write_json(args.out / "blt_memory.json", {"environment": describe_environment("cpu"),
                                               "command": " ".join(sys.argv), "results": rows})


if __name__ == "__main__":
    main()
