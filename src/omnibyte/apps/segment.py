"""Split a byte stream made of concatenated pieces into segments of one kind each.

Three passes, from exact to statistical:

1. **Structured pieces**: every validated header anywhere in the stream (signatures.py,
   one ``bytes.find`` per magic number) whose structure can be walked gives an exact
   segment ``[offset, offset + length)``; headers inside an accepted segment are parts of it.
2. **Text versus binary** in the remaining gaps: a per-byte "text byte" mask (printable
   ASCII, whitespace, complete UTF-8 sequences) averaged over 64-byte windows splits text
   runs from binary runs; binary runs split further into uniform (random-looking) and
   structured windows by a chi-square test. Each boundary is then refined to the byte by a
   two-segment maximum-likelihood fit around it.
3. **Kinds of text**: inside a text run, lines are scored as prose, code, ABC or markup
   (detect.line_scores) and a Viterbi pass with a switching penalty places boundaries at
   line starts.

Every segment is labelled by the detector on its own bytes, and neighbouring unstructured
segments of the same kind are merged (structured files stay separate: two WAV files back
to back are two files with an exact boundary).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from omnibyte.apps.detect import LINE_CLASSES, TEXT_BYTES, detect, score_lines
from omnibyte.apps.signatures import HeaderMatch, find_headers

TEXT_WINDOW = 64
TEXT_WINDOW_MIN_RATIO = 0.9  # text windows hold >= 90% text bytes; random bytes about 44%
UNIFORM_WINDOW = 512
UNIFORM_CHI_SQUARE = 255 + 4 * (2 * 255) ** 0.5  # 4 sigma above the mean for uniform bytes
REFINE_CONTEXT = 4096  # bytes on each side used to model the two sides of a boundary
LINE_SWITCH_PENALTY = 10.0  # log-likelihood a change of text kind must gain
MIN_SEGMENT = 8  # shorter unstructured leftovers join a neighbour
STRONG_MAGIC = 4  # headers with shorter magic numbers count only when their length is measured


@dataclasses.dataclass
class Segment:
    """Bytes ``[start, end)`` of one kind."""

    start: int
    end: int
    kind: str
    confidence: float
    structured: bool = False  # bounded by a validated header and its measured length

    @property
    def length(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- pass 1: structured pieces ----------------------------------------------------------

def structured_spans(data: bytes) -> list[tuple[int, int, HeaderMatch, bool]]:
    """(start, end, header, length measured) of the outermost validated files in ``data``."""
    headers = find_headers(data)
    spans = []
    covered = 0
    for index, match in enumerate(headers):
        if match.offset < covered:
            continue  # part of the file before it (a thumbnail, a member of an archive, ...)
        length = match.measure(data)
        if length is None:
            if len(match.signature.magic) < STRONG_MAGIC:
                continue
            later = [other.offset for other in headers[index + 1:] if other.offset > match.offset]
            end = later[0] if later else len(data)
        else:
            end = match.offset + length
        spans.append((match.offset, end, match, length is not None))
        covered = end
    return spans


# ---- pass 2: text versus binary, uniform versus structured binary ------------------------

def text_byte_mask(array: np.ndarray) -> np.ndarray:
    """True where a byte is printable ASCII, whitespace, or part of a complete UTF-8 sequence."""
    mask = TEXT_BYTES[array]
    continuation = (array & 0xC0) == 0x80
    for width, low, high in ((2, 0xC2, 0xDF), (3, 0xE0, 0xEF), (4, 0xF0, 0xF4)):
        count = len(array) - width + 1
        if count <= 0:
            continue
        valid = (array[:count] >= low) & (array[:count] <= high)
        for shift in range(1, width):
            valid &= continuation[shift:shift + count]
        starts = np.flatnonzero(valid)
        for shift in range(width):
            mask[starts + shift] = True
    return mask


def window_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(first window, end window, label) of each run of equal labels."""
    changes = np.flatnonzero(np.diff(labels)) + 1
    edges = np.concatenate([[0], changes, [len(labels)]])
    return [(int(edges[i]), int(edges[i + 1]), int(labels[edges[i]])) for i in range(len(edges) - 1)]


def best_split(left_log_probs: np.ndarray, right_log_probs: np.ndarray) -> int:
    """Index p maximising sum(left[:p]) + sum(right[p:]): the most likely change point."""
    gain = np.concatenate([[0.0], np.cumsum(left_log_probs - right_log_probs)])
    return int(np.argmax(gain))


def refine_text_boundary(mask: np.ndarray, edge: int, text_first: bool) -> int:
    """Byte position of a text/binary change near window edge ``edge`` in ``mask``."""
    low, high = max(edge - 2 * TEXT_WINDOW, 0), min(edge + 2 * TEXT_WINDOW, len(mask))
    binary_side = mask[edge:high] if text_first else mask[low:edge]
    binary_rate = float(np.clip(binary_side.mean() if len(binary_side) else 0.5, 0.02, 0.9))
    local = mask[low:high]
    text_log = np.where(local, np.log(0.995), np.log(0.005))
    binary_log = np.where(local, np.log(binary_rate), np.log(1 - binary_rate))
    split = best_split(text_log, binary_log) if text_first else best_split(binary_log, text_log)
    return low + split


def histogram_log_probs(array: np.ndarray) -> np.ndarray:
    """Log-probability table of a Laplace-smoothed byte histogram."""
    counts = np.bincount(array, minlength=256) + 0.5
    return np.log(counts / counts.sum())


def refine_histogram_boundary(array: np.ndarray, edge: int, window: int) -> int:
    """Byte position of a change between two byte distributions near ``edge``."""
    low, high = max(edge - window, 0), min(edge + window, len(array))
    left_model = histogram_log_probs(array[max(edge - REFINE_CONTEXT, 0):max(edge - window, 1)])
    right_model = histogram_log_probs(array[min(edge + window, len(array) - 1):edge + REFINE_CONTEXT])
    local = array[low:high]
    return low + best_split(left_model[local], right_model[local])


def is_uniform_window(window: np.ndarray) -> bool:
    expected = len(window) / 256
    chi_square = float(((np.bincount(window, minlength=256) - expected) ** 2).sum() / expected)
    return chi_square < UNIFORM_CHI_SQUARE * (1 + 64 / max(len(window), 64))


def split_binary(array: np.ndarray, start: int, end: int) -> list[int]:
    """Boundaries between uniform and structured stretches of a binary run."""
    count = (end - start) // UNIFORM_WINDOW
    if count < 3:
        return []
    labels = np.array([is_uniform_window(array[start + i * UNIFORM_WINDOW:start + (i + 1) * UNIFORM_WINDOW])
                       for i in range(count)], dtype=np.int8)
    runs = window_runs(labels)
    # single stray windows are noise, not pieces
    labels = np.array([label if run_end - first >= 2 else 1 - label
                       for first, run_end, label in runs for _ in range(first, run_end)], dtype=np.int8)
    return [refine_histogram_boundary(array, start + first * UNIFORM_WINDOW, UNIFORM_WINDOW)
            for first, _, _ in window_runs(labels)[1:]]


def text_binary_boundaries(array: np.ndarray) -> list[tuple[int, bool]]:
    """Boundaries of the gap ``array`` and whether the stretch each one starts is text."""
    mask = text_byte_mask(array)
    count = -(-len(array) // TEXT_WINDOW)
    ratios = np.add.reduceat(mask.astype(np.float64), np.arange(0, len(array), TEXT_WINDOW))
    ratios /= np.diff(np.append(np.arange(0, len(array), TEXT_WINDOW), len(array)))
    labels = (ratios >= TEXT_WINDOW_MIN_RATIO).astype(np.int8)
    if count > 1 and len(array) % TEXT_WINDOW and len(array) % TEXT_WINDOW < 16:
        labels[-1] = labels[-2]  # a tiny last window says little
    runs = window_runs(labels)
    starts = [(0, bool(runs[0][2]))]
    for first, _, label in runs[1:]:
        edge = first * TEXT_WINDOW
        starts.append((refine_text_boundary(mask, edge, text_first=not label), bool(label)))
    boundaries = []
    for index, (start, is_text) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(array)
        if end <= start:
            continue
        boundaries.append((start, is_text))
        if not is_text:
            boundaries += [(position, False) for position in split_binary(array, start, end)]
    return boundaries


# ---- pass 3: kinds of text --------------------------------------------------------------

def text_kind_boundaries(data: bytes) -> list[int]:
    """Line starts in text ``data`` where the line class changes (Viterbi with a switch penalty)."""
    lines = [line + b"\n" for line in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    if len(lines) < 2:
        return []
    scores = score_lines([line.decode("utf-8", "replace") for line in lines])
    blank = scores.max(axis=1) <= 0
    log_probs = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
    log_probs[blank] = 0.0
    classes = len(LINE_CLASSES)
    switch = LINE_SWITCH_PENALTY * (1 - np.eye(classes))
    total = log_probs[0].copy()
    back = np.zeros((len(lines), classes), dtype=np.int64)
    for index in range(1, len(lines)):
        candidates = total[:, None] - switch  # [from, to]
        back[index] = candidates.argmax(axis=0)
        total = candidates.max(axis=0) + log_probs[index]
    path = np.empty(len(lines), dtype=np.int64)
    path[-1] = int(total.argmax())
    for index in range(len(lines) - 1, 0, -1):
        path[index - 1] = back[index, path[index]]
    offsets = np.cumsum([0] + [len(line) for line in lines])
    return [int(offsets[index]) for index in np.flatnonzero(np.diff(path)) + 1]


# ---- putting it together ----------------------------------------------------------------

def unstructured_starts(data: bytes, start: int, end: int) -> list[int]:
    """Segment starts inside the gap [start, end) that holds no validated file."""
    array = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
    stretches = text_binary_boundaries(array)
    starts = []
    for index, (offset, is_text) in enumerate(stretches):
        starts.append(start + offset)
        if is_text:
            stretch_end = stretches[index + 1][0] if index + 1 < len(stretches) else len(array)
            starts += [start + offset + inner for inner in text_kind_boundaries(array[offset:stretch_end].tobytes())]
    return sorted(set(starts))


def label(data: bytes, start: int, end: int, model) -> Segment:
    found = detect(data[start:end], model)
    return Segment(start, end, found.kind, found.confidence)


def segment(data: bytes, model=None) -> list[Segment]:
    """Segments of ``data`` (contiguous, covering it), each of one kind."""
    data = bytes(data)
    pieces: list[Segment] = []
    cursor = 0

    def add_gap(gap_end: int) -> None:
        starts = unstructured_starts(data, cursor, gap_end) + [gap_end]
        for first, last in zip(starts, starts[1:]):
            if last > first:
                pieces.append(label(data, first, last, model))

    for start, end, match, measured in structured_spans(data):
        if start > cursor:
            add_gap(start)
        pieces.append(Segment(start, end, match.kind, 0.99 if measured else 0.8, structured=True))
        cursor = end
    if cursor < len(data):
        add_gap(len(data))
    return merge_segments(absorb_slivers(pieces), data, model)


def absorb_slivers(pieces: list[Segment]) -> list[Segment]:
    """Join unstructured segments shorter than MIN_SEGMENT to the segment before them (or,
    at the very start, to an unstructured segment after them)."""
    result: list[Segment] = []
    for piece in pieces:
        if result and not piece.structured and piece.length < MIN_SEGMENT:
            result[-1] = dataclasses.replace(result[-1], end=piece.end)
        elif result and not piece.structured and not result[-1].structured and result[-1].length < MIN_SEGMENT:
            result[-1] = dataclasses.replace(piece, start=result[-1].start)
        else:
            result.append(piece)
    return result


def merge_segments(pieces: list[Segment], data: bytes, model) -> list[Segment]:
    """Merge neighbouring unstructured segments of the same kind (and relabel the union)."""
    merged: list[Segment] = []
    for piece in pieces:
        previous = merged[-1] if merged else None
        if previous and not previous.structured and not piece.structured and previous.kind == piece.kind:
            merged[-1] = dataclasses.replace(previous, end=piece.end)
        else:
            merged.append(piece)
    return [piece if piece.structured or piece in pieces else label(data, piece.start, piece.end, model)
            for piece in merged]
