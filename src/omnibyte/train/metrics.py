"""Training metrics: JSON lines on disk, optional TensorBoard, and the loss-curve plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omnibyte.fileio import save_png


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (and TensorBoard if asked)."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("omnibyte: tensorboard is not installed; logging to JSONL only")
            else:
                self.writer = SummaryWriter(str(tensorboard_dir))

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run redoes them)."""
        if not self.path.exists():
            return
        kept = [line for line in read_metrics(self.path) if line.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash mid-write
            continue
    return records


def plot_loss_curve(metrics_path: Path, png_path: Path) -> Path:
    """Train and validation bits/byte against step, written to ``png_path`` (returned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["bits_per_byte"]) for r in records if "bits_per_byte" in r]
    valid = [(r["step"], r["val_bits_per_byte"]) for r in records if "val_bits_per_byte" in r]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        axes.plot(*zip(*train), label="train", linewidth=1)
    if valid:
        axes.plot(*zip(*valid), "o-", label="validation", markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel("bits per byte")
    axes.set_title("omnibyte training")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return save_png(figure, png_path)
