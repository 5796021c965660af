"""Where a file's patches fall: the patcher of a model (or a next-byte model used as an
entropy model) run on a file, as a summary, a JSON report and a plot of entropy against
position with the patch boundaries marked.

The patcher comes from the model when it has one (``model.patching``, a ``PatchingConfig``,
and ``model.entropy_model``, an ``EntropyModel`` or None: the BLT family), with any field the
user overrides; otherwise the user names a scheme and the model itself, a next-byte model,
serves as the entropy model. The file is scored as a document: ``[BOS] + data``, so its
first byte starts a patch.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnibyte.errors import OmnibyteError
from omnibyte.fileio import save_png
from omnibyte.models.base import BOS, ByteModel
from omnibyte.models.blt.entropy import EntropyModel
from omnibyte.models.blt.patching import (
    MAX_ENTROPY_BITS,
    PatchingConfig,
    calibrate_threshold,
    needs_entropy,
    patch_starts,
)

SHOWN_BOUNDARIES = 32  # boundaries the summary lists
REPORTED_BOUNDARIES = 1000  # boundaries the JSON report lists (all counts are over the whole file)
DEFAULT_PLOT_BYTES = 2000  # the plot shows the file's first bytes: boundaries must stay visible


@dataclasses.dataclass
class PatchReport:
    """The patches of one file: ``starts`` are the byte offsets where patches start (the first
    byte always does), ``entropies`` the entropy (bits) of each byte's prediction, or None
    when the patcher runs without an entropy model."""

    name: str
    size: int
    config: PatchingConfig
    starts: np.ndarray
    entropies: np.ndarray | None
    calibrated_for: float | None = None  # the target mean patch size, when the threshold was calibrated

    @property
    def num_patches(self) -> int:
        return len(self.starts)

    @property
    def mean_patch_size(self) -> float:
        return self.size / max(self.num_patches, 1)

    def patch_sizes(self) -> np.ndarray:
        return np.diff(np.append(self.starts, self.size))

    def to_dict(self) -> dict[str, Any]:
        sizes = self.patch_sizes()
        report = {
            "file": self.name, "bytes": self.size, "patches": self.num_patches,
            "mean_bytes_per_patch": self.mean_patch_size,
            "patch_size": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
            "patching": self.config.to_dict(),
            "boundaries": self.starts[:REPORTED_BOUNDARIES].tolist(),
            "boundaries_listed": min(self.num_patches, REPORTED_BOUNDARIES),
        }
        if self.calibrated_for is not None:
            report["calibrated_for_mean_patch_size"] = self.calibrated_for
        if self.entropies is not None:
            report["entropy_bits"] = {"mean": float(self.entropies.mean()), "max": float(self.entropies.max())}
        return report


def model_patcher(
    model: ByteModel, overrides: dict[str, Any], source: str = "the model"
) -> tuple[PatchingConfig, EntropyModel | None]:
    """The patcher to run: the model's own (with ``overrides`` on top) or, for a model
    without one, the ``overrides`` (which must name a scheme) with the model as entropy model."""
    own = getattr(model, "patching", None)
    if isinstance(own, PatchingConfig):
        config = PatchingConfig.from_dict({**own.to_dict(), **overrides})
        entropy_model = getattr(model, "entropy_model", None)
        if needs_entropy(config) and entropy_model is None:
            raise OmnibyteError(f"{source} has no entropy model for the {config.scheme} scheme "
                                f"(choose --scheme fixed or space)")
        return config, entropy_model
    if "scheme" not in overrides:
        raise OmnibyteError(f"{source} has no patcher: give --scheme (entropy, monotonic, fixed or space) "
                            f"to use it as the entropy model")
    return PatchingConfig.from_dict(overrides), EntropyModel(model)


def document_tokens(data: bytes, device: torch.device) -> torch.Tensor:
    """``[BOS] + data`` as one row [1, len + 1]."""
    tokens = torch.full((1, len(data) + 1), BOS, dtype=torch.long)
    tokens[0, 1:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return tokens.to(device)


def find_patches(
    data: bytes,
    config: PatchingConfig,
    entropy_model: EntropyModel | None,
    name: str = "data",
    target_mean_patch_size: float | None = None,
) -> PatchReport:
    """The patches of ``data`` (one document); with ``target_mean_patch_size`` the threshold is
    first calibrated on ``data`` itself (entropy and monotonic schemes)."""
    if not data:
        raise OmnibyteError(f"{name} is empty: nothing to patch")
    if entropy_model is None and (needs_entropy(config) or target_mean_patch_size is not None):
        raise OmnibyteError(f"the {config.scheme} scheme needs an entropy model")
    device = entropy_model.model.device if entropy_model is not None else torch.device("cpu")
    tokens = document_tokens(data, device)
    entropies = entropy_model.entropies(tokens) if entropy_model is not None else None
    if target_mean_patch_size is not None:
        # the report counts bytes per patch over the file's bytes, BOS (a patch of its own) left out
        valid = torch.ones_like(tokens, dtype=torch.bool)
        valid[:, 0] = False
        threshold = calibrate_threshold(config, entropies, target_mean_patch_size, tokens, valid)
        config = dataclasses.replace(config, threshold=threshold)
    starts = patch_starts(config, tokens, entropies)[0, 1:]  # byte offsets: token t is byte t - 1
    return PatchReport(
        name=name, size=len(data), config=config,
        starts=torch.nonzero(starts).flatten().cpu().numpy(),
        entropies=None if entropies is None else entropies[0, 1:].cpu().numpy(),
        calibrated_for=target_mean_patch_size,
    )


def format_summary(report: PatchReport, data: bytes) -> str:
    sizes = report.patch_sizes()
    lines = [
        f"{report.name}: {report.size:,} bytes in {report.num_patches:,} patches, "
        f"{report.mean_patch_size:.2f} bytes per patch (sizes {sizes.min()}..{sizes.max()}, median {np.median(sizes):g})",
        f"patcher: {report.config.describe()}",
    ]
    if report.calibrated_for is not None:
        lines.append(f"threshold {report.config.threshold:.4f} bits calibrated on this file for "
                     f"{report.calibrated_for:g} bytes per patch")
    if report.entropies is not None:
        lines.append(f"entropy: mean {report.entropies.mean():.3f} bits, max {report.entropies.max():.3f} bits")
    shown = report.starts[:SHOWN_BOUNDARIES].tolist()
    more = f", ... ({report.num_patches - len(shown):,} more)" if report.num_patches > len(shown) else ""
    lines.append("first boundaries: " + ", ".join(str(offset) for offset in shown) + more)
    ends = list(report.starts[1:9]) + [report.size]
    patches = [data[start:end] for start, end in zip(report.starts[:8], ends)]
    lines.append("first patches: " + " | ".join(_printable(patch) for patch in patches))
    return "\n".join(lines)


def _printable(patch: bytes) -> str:
    return repr(patch)[2:-1]


def plot_patches(report: PatchReport, path: str | Path, max_bytes: int = DEFAULT_PLOT_BYTES) -> Path:
    """PNG of the entropy of each of the first ``max_bytes`` bytes with the patch boundaries
    marked (patch sizes instead, without an entropy model), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(report.size, max_bytes)
    starts = report.starts[report.starts < shown]
    figure, axes = plt.subplots(figsize=(11, 4), dpi=110)
    offsets = np.arange(shown)
    if report.entropies is not None:
        entropies = report.entropies[:shown]
        axes.plot(offsets, entropies, color="tab:blue", linewidth=0.8, label="next-byte entropy")
        axes.scatter(starts, entropies[starts], color="tab:red", s=9, zorder=3, label="patch start")
        if report.config.scheme == "entropy":
            axes.axhline(report.config.threshold, color="grey", linestyle="--", linewidth=0.8,
                         label=f"threshold {report.config.threshold:.2f} bits")
        axes.set_ylabel("entropy (bits)")
        axes.set_ylim(0, MAX_ENTROPY_BITS + 0.3)  # a 256-way prediction has at most 8 bits
    else:
        sizes = report.patch_sizes()[: len(starts)]
        axes.bar(starts, sizes, width=np.maximum(sizes, 1), align="edge", color="tab:blue", alpha=0.4,
                 edgecolor="tab:blue", label="patch")
        axes.set_ylabel("patch size (bytes)")
    for start in starts:
        axes.axvline(start, color="tab:red", alpha=0.15, linewidth=0.6)
    part = f"first {shown:,} of {report.size:,} bytes" if shown < report.size else f"{report.size:,} bytes"
    axes.set_title(f"{report.name}: {part}, {report.mean_patch_size:.2f} bytes per patch "
                   f"({report.config.describe()})", fontsize=9)
    axes.set_xlabel("byte offset")
    axes.set_xlim(0, max(shown, 1))
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    return save_png(figure, path)
