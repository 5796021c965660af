"""Anomaly detection: where a byte stream stops looking like itself under a model.

Every byte gets its surprisal (bits, from ``omnibyte.scoring``); a moving average over
``window`` bytes turns it into a curve, and each point of the curve is compared with the
file's own robust baseline (median and MAD of the curve). A file that is hard to predict
everywhere (audio, compressed data) therefore raises no alarm by itself: only stretches
that are surprising *for that file* do. Regions are the stretches above a threshold of
that robust score, with edges placed at half the region's peak height (where a moving
average of a step crosses it), merged when closer than half a window.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from omnibyte.fileio import save_png
from omnibyte.models.base import ByteModel
from omnibyte.scoring import score_bytes

DEFAULT_WINDOW = 64
DEFAULT_THRESHOLD = 4.0  # robust z-score of the smoothed surprisal
MIN_SPREAD_BITS = 0.1  # floor on the baseline's spread: a near-perfectly predicted file
# would otherwise call any hundredth of a bit "anomalous"
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclasses.dataclass(frozen=True)
class Region:
    """A surprising stretch: ``bits_per_byte`` is its mean surprisal, ``score`` its peak
    robust z-score against the file's baseline."""

    offset: int
    length: int
    bits_per_byte: float
    score: float

    @property
    def end(self) -> int:
        return self.offset + self.length

    def overlaps(self, start: int, end: int) -> bool:
        return self.offset < end and start < self.end


@dataclasses.dataclass
class AnomalyReport:
    """Per-byte surprisal of one file, its smoothed curve, baseline and regions."""

    name: str
    bits: np.ndarray
    smoothed: np.ndarray
    baseline: float  # median of the smoothed curve, bits/byte
    spread: float  # robust standard deviation of the smoothed curve, bits/byte
    window: int
    threshold: float | None
    regions: list[Region]

    @property
    def mean_bits_per_byte(self) -> float:
        return float(self.bits.mean()) if len(self.bits) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.name, "bytes": len(self.bits), "mean_bits_per_byte": self.mean_bits_per_byte,
                "baseline_bits_per_byte": self.baseline, "spread_bits_per_byte": self.spread,
                "window": self.window, "threshold": self.threshold,
                "regions": [{**dataclasses.asdict(region),
                             "excess_bits_per_byte": region.bits_per_byte - self.baseline}
                            for region in self.regions]}


# ---- the signal ---------------------------------------------------------------------

def surprisal(
    data: bytes | np.ndarray,
    model: ByteModel,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Bits of surprisal of every byte of ``data`` under ``model``.

    Windows overlap by half by default (``stride = context // 2``), so every byte after the
    first window is predicted from at least half a context: non-overlapping windows would
    put a spike of context-free bytes at every window start.
    """
    if context is not None and context < 1:  # 0 would silently mean the default
        raise ValueError(f"context must be at least 1, got {context}")
    context = min(context or model.max_seq_len, model.max_seq_len)
    stride = stride or max(context // 2, 1)
    was_training = model.training
    model.eval()
    try:
        return score_bytes(model, data, context=context, stride=stride, batch_size=batch_size).bits
    finally:
        model.train(was_training)


def smooth(bits: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` bytes (shorter at the edges), same length."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    values = np.asarray(bits, dtype=np.float64)
    if len(values) == 0:
        return values.copy()
    sums = np.concatenate([[0.0], np.cumsum(values)])
    positions = np.arange(len(values))
    starts = np.clip(positions - window // 2, 0, len(values))
    ends = np.clip(starts + window, 0, len(values))
    return (sums[ends] - sums[starts]) / (ends - starts)


def robust_baseline(smoothed: np.ndarray, min_spread: float = MIN_SPREAD_BITS) -> tuple[float, float]:
    """(median, robust standard deviation) of the curve; the spread is at least ``min_spread``."""
    if len(smoothed) == 0:
        return 0.0, min_spread
    median = float(np.median(smoothed))
    mad = float(np.median(np.abs(smoothed - median)))
    return median, max(MAD_TO_SIGMA * mad, min_spread)


def anomaly_scores(
    bits: np.ndarray, window: int = DEFAULT_WINDOW, min_spread: float = MIN_SPREAD_BITS
) -> np.ndarray:
    """Robust z-score of the smoothed surprisal at every byte."""
    smoothed = smooth(bits, window)
    baseline, spread = robust_baseline(smoothed, min_spread)
    return (smoothed - baseline) / spread


# ---- regions --------------------------------------------------------------------------

def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _half_height_span(
    smoothed: np.ndarray, start: int, end: int, baseline: float, max_extension: int
) -> tuple[int, int]:
    """Edges of the bump whose core is ``[start, end)``: where the curve crosses half its peak.

    A weak bump's half height lies outside its core; the search stops ``max_extension``
    bytes out (half a window: how far a moving average smears a short bump), so it cannot
    walk through a neighbouring bump.

    ``smooth`` averages ``[i - w//2, i - w//2 + w)``, so with an even window a step from
    ``a`` to ``b`` reads exactly half height at both ``a`` and ``b``: the span takes the
    first at-least-half point and ends after the last strictly-above-half one.
    """
    core = smoothed[start:end]
    level = baseline + (core.max() - baseline) / 2
    low = start + int(np.flatnonzero(core >= level)[0])
    high = start + int(np.flatnonzero(core > level)[-1]) + 1
    lowest, highest = max(start - max_extension, 0), min(end + max_extension, len(smoothed))
    while low > lowest and smoothed[low - 1] >= level:
        low -= 1
    while high < highest and smoothed[high] > level:
        high += 1
    return low, high


def _merge(spans: list[tuple[int, int]], max_gap: int) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for low, high in sorted(spans):
        if merged and low - merged[-1][1] <= max_gap:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return [(low, high) for low, high in merged]


def find_regions(
    bits: np.ndarray,
    window: int = DEFAULT_WINDOW,
    threshold: float | None = DEFAULT_THRESHOLD,
    top_k: int | None = None,
    min_spread: float = MIN_SPREAD_BITS,
) -> list[Region]:
    """The most surprising regions of a file, highest score first.

    A region's core is a run where the smoothed surprisal's robust z-score exceeds
    ``threshold`` (``None``: 0, i.e. anything above the median, so only ``top_k`` limits
    the list); its edges are where the curve falls to half the core's peak height.
    Regions closer than half a window are merged: smoothing cannot tell them apart.
    """
    return report_from_bits(bits, window=window, threshold=threshold, top_k=top_k, min_spread=min_spread).regions


def check_region_options(window: int, threshold: float | None, top_k: int | None) -> None:
    """ValueError for options that would silently find nothing (a NaN threshold compares
    false everywhere) or everything."""
    if threshold is None and top_k is None:
        raise ValueError("finding regions needs a threshold, a top_k or both")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")


def report_from_bits(
    bits: np.ndarray,
    name: str = "",
    window: int = DEFAULT_WINDOW,
    threshold: float | None = DEFAULT_THRESHOLD,
    top_k: int | None = None,
    min_spread: float = MIN_SPREAD_BITS,
) -> AnomalyReport:
    """Smoothed curve, baseline and regions (see ``find_regions``) of per-byte surprisal."""
    check_region_options(window, threshold, top_k)
    bits = np.asarray(bits, dtype=np.float64)
    smoothed = smooth(bits, window)
    baseline, spread = robust_baseline(smoothed, min_spread)
    scores = (smoothed - baseline) / spread
    # cores closer than half a window are one smeared bump; so are overlapping spans
    cores = _merge(_runs(scores > (threshold if threshold is not None else 0.0)), window // 2)
    spans = _merge([_half_height_span(smoothed, start, end, baseline, window // 2) for start, end in cores],
                   window // 2)
    regions = [Region(offset=low, length=high - low, bits_per_byte=float(bits[low:high].mean()),
                      score=float(scores[low:high].max())) for low, high in spans]
    regions.sort(key=lambda region: (-region.score, region.offset))
    if top_k is not None:
        regions = regions[:top_k]
    return AnomalyReport(name, bits, smoothed, baseline, spread, window, threshold, regions)


def analyze(
    data: bytes | np.ndarray,
    model: ByteModel,
    name: str = "",
    window: int = DEFAULT_WINDOW,
    threshold: float | None = DEFAULT_THRESHOLD,
    top_k: int | None = None,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> AnomalyReport:
    """Score ``data`` with ``model`` and find its surprising regions."""
    check_region_options(window, threshold, top_k)  # before the scoring, which takes the time
    bits = surprisal(data, model, context=context, stride=stride, batch_size=batch_size)
    return report_from_bits(bits, name=name, window=window, threshold=threshold, top_k=top_k)


# ---- evaluation -------------------------------------------------------------------------

def roc_auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative (ties count half), from average ranks (Mann-Whitney U)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    num_positive = int(labels.sum())
    num_negative = len(labels) - num_positive
    if num_positive == 0 or num_negative == 0:
        raise ValueError("ROC-AUC needs at least one positive and one negative")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # tied scores share the mean of the ranks they span
    tie_starts = np.flatnonzero(np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1]]))
    tie_ends = np.concatenate([tie_starts[1:], [len(scores)]])
    mean_ranks = (tie_starts + tie_ends + 1) / 2  # ranks are 1-based
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(mean_ranks, tie_ends - tie_starts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative))


# ---- plot ---------------------------------------------------------------------------------

MAX_PLOTTED_POINTS = 20_000


def _bucket(values: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centre offset, min, mean, max) of ``buckets`` equal slices of ``values``."""
    edges = np.linspace(0, len(values), buckets + 1).astype(np.int64)
    starts = edges[:-1]
    lows = np.minimum.reduceat(values, starts)
    highs = np.maximum.reduceat(values, starts)
    means = np.add.reduceat(values, starts) / np.diff(edges)
    return (starts + edges[1:]) / 2, lows, means, highs


def plot_surprisal(
    bits: np.ndarray,
    regions: Sequence[Region],
    path: str | Path,
    window: int = DEFAULT_WINDOW,
    name: str = "",
) -> Path:
    """PNG of per-byte surprisal (light), its moving average and the regions, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = np.asarray(bits, dtype=np.float64)
    smoothed = smooth(bits, window)
    figure, axes = plt.subplots(figsize=(11, 4), dpi=110)
    if len(bits) <= MAX_PLOTTED_POINTS:
        offsets = np.arange(len(bits))
        axes.plot(offsets, bits, color="tab:blue", alpha=0.25, linewidth=0.5, label="per byte")
        axes.plot(offsets, smoothed, color="tab:blue", linewidth=1.2, label=f"mean over {window} bytes")
    elif len(bits):  # too many bytes to draw one by one: the min-max envelope per bucket
        centres, lows, _, highs = _bucket(bits, MAX_PLOTTED_POINTS // 4)
        axes.fill_between(centres, lows, highs, color="tab:blue", alpha=0.2, linewidth=0, label="per byte (range)")
        centres, _, means, _ = _bucket(smoothed, MAX_PLOTTED_POINTS // 4)
        axes.plot(centres, means, color="tab:blue", linewidth=1.2, label=f"mean over {window} bytes")
    if len(bits):
        baseline, _ = robust_baseline(smoothed)
        axes.axhline(baseline, color="grey", linestyle="--", linewidth=0.8, label=f"baseline {baseline:.2f}")
    for rank, region in enumerate(regions, 1):
        axes.axvspan(region.offset, region.end, color="tab:red", alpha=0.25,
                     label="surprising regions" if rank == 1 else None)
        axes.annotate(str(rank), (region.offset + region.length / 2, 1.0), xycoords=("data", "axes fraction"),
                      ha="center", va="bottom", fontsize=8, color="tab:red")
    mean = float(bits.mean()) if len(bits) else 0.0
    axes.set_title(f"{name or 'data'}: {len(bits):,} bytes, mean {mean:.3f} bits/byte, "
                   f"{len(regions)} surprising region{'s' if len(regions) != 1 else ''}", pad=14)
    axes.set_xlabel("byte offset")
    axes.set_ylabel("surprisal (bits)")
    axes.set_xlim(0, max(len(bits), 1))
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    return save_png(figure, path)


# ---- report -------------------------------------------------------------------------------

def format_table(report: AnomalyReport) -> str:
    lines = [f"{report.name}: {len(report.bits):,} bytes, mean {report.mean_bits_per_byte:.3f} bits/byte; "
             f"baseline {report.baseline:.3f} +- {report.spread:.3f} bits/byte over {report.window}-byte windows"]
    if not report.regions:
        lines.append("no surprising region" + (f" (none with robust z > {report.threshold:g})"
                                                if report.threshold is not None else ""))
        return "\n".join(lines)
    lines.append(f"{'rank':>4}{'offset':>12}{'length':>10}{'bits/byte':>11}{'vs baseline':>13}{'score':>8}")
    for rank, region in enumerate(report.regions, 1):
        lines.append(f"{rank:>4}{region.offset:>12,}{region.length:>10,}{region.bits_per_byte:>11.3f}"
                     f"{region.bits_per_byte - report.baseline:>+13.3f}{region.score:>8.1f}")
    return "\n".join(lines)
