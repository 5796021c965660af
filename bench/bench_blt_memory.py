"""What BLT's gated patch memory (``latent.memory_slots``) does: a recall task on the CPU.

Each row: a random key of digits 0..3 (``--key-length``), filler words, then ``KEY=`` and the
key again. With a windowed latent (``latent.window`` patches) and windowed local layers, the
repeated key is out of reach of attention; only the memory can carry it. The same tiny model
and steps with and without memory slots, and with a full-attention latent as the reference
(``--full-reference``); reported: bits/byte on the repeated key (2 bits: a guess among the 4
digits; 0: recalled) and on the filler (where the memory should not hurt).

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
KEY_ALPHABET = b"0123"


def make_rows(count: int, length: int, rng: np.random.Generator, key_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``length`` bytes and a mask of the repeated key."""
    rows, masks = [], []
    for _ in range(count):
        key = bytes(KEY_ALPHABET[i] for i in rng.integers(0, len(KEY_ALPHABET), key_length))
        tail = b" KEY=" + key + b"."
        filler = bytearray()
        while len(filler) < length - len(key) - len(tail) - 1:
            filler += WORDS[rng.integers(len(WORDS))] + b" "
        row = key + b" " + bytes(filler[: length - len(key) - len(tail) - 1]) + tail
        mask = np.zeros(length, bool)
        mask[length - 1 - key_length : length - 1] = True
        rows.append(np.frombuffer(row, np.uint8))
        masks.append(mask)
    return np.stack(rows).astype(np.int64), np.stack(masks)


def bits(model, rows: np.ndarray, mask: np.ndarray, key_length: int) -> tuple[float, float]:
    targets = torch.from_numpy(rows)
    tokens = torch.cat([torch.full((len(rows), 1), BOS), targets[:, :-1]], dim=1)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(tokens).float(), -1).gather(-1, targets.unsqueeze(-1))[..., 0]
    nats = -log_probs.numpy()
    filler = np.zeros_like(mask)
    filler[:, key_length + 1 : -key_length - 6] = True
    return float(nats[mask].mean() / np.log(2)), float(nats[filler].mean() / np.log(2))


def train(slots: int, window: int, args) -> dict:
    torch.manual_seed(args.seed)
    model = build_model("blt", "tiny", max_sequence_length=args.length + 1,
                        patching=dict(scheme="fixed", stride=4, max_patch_size=4),
                        local=dict(window=8), latent=dict(window=window, memory_slots=slots))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    model.train()
    for _ in range(args.steps):
        rows, _ = make_rows(args.batch_size, args.length, rng, args.key_length)
        targets = torch.from_numpy(rows)
        tokens = torch.cat([torch.full((len(rows), 1), BOS), targets[:, :-1]], dim=1)
        loss = model.loss(tokens, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_rows, test_mask = make_rows(256, args.length, np.random.default_rng(10_000 + args.seed), args.key_length)
    key_bits, filler_bits = bits(model, test_rows, test_mask, args.key_length)
    return {"latent_window": window or "all", "memory_slots": slots, "params": model.num_parameters(), "steps": args.steps,
            "seconds": round(time.time() - started, 1), "key_bits_per_byte": key_bits,
            "filler_bits_per_byte": filler_bits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--key-length", type=int, default=1)
    parser.add_argument("--full-reference", action="store_true", help="also a full-attention latent, no memory")
    parser.add_argument("--latent-window", type=int, default=4)
    parser.add_argument("--slots", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [train(slots, args.latent_window, args) for slots in args.slots]
    if args.full_reference:
        rows.append(train(0, 0, args))
    print_table(rows, ["latent_window", "memory_slots", "params", "steps", "seconds", "key_bits_per_byte",
                       "filler_bits_per_byte"],
                title=f"recall of a {args.key_length}-digit key {args.length} bytes back (patches of 4 bytes, "
                      f"local window 8; a guess: 2 bits)")
    write_json(args.out / "blt_memory.json", {"environment": describe_environment("cpu"),
                                               "command": " ".join(sys.argv), "results": rows})


if __name__ == "__main__":
    main()
