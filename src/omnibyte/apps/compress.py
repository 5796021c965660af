"""Lossless compression with any omnibyte model: range coding of its next-byte probabilities.

The input is cut into chunks of ``chunk_size`` bytes; each chunk is coded on its own, starting
from BOS. Chunks are coded ``batch_size`` at a time as the rows of one batch ("a group"): at
every step the model consumes one token per row through its incremental interface
(``model.decoder``: eager, or static-shape and CUDA-graph replayed when ``fast``), the
next-byte distributions are
quantized to integer frequencies, and the group's byte at that step of every still-active
row is range-coded (``constriction``) into the group's stream, rows interleaved step by step.
The decoder runs the very same computation (same batch shape, device type, dtype, path) and
recovers each byte before feeding it back, so it sees bit-identical frequencies.

Container format: ``omnibyte.apps.container``; spec and limits: docs/compression.md.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from omnibyte.apps import container
from omnibyte.apps.container import CodingSettings, Container
from omnibyte.errors import OmnibyteError
from omnibyte.models.base import BOS, NUM_BYTES, ByteModel
from omnibyte.models.serialization import config_document

PRECISION = 24  # constriction's range coder codes with 24-bit frequencies
DEFAULT_CHUNK_SIZE = 64 * 1024  # clamped to the model's context
DEFAULT_BATCH_SIZE = 256
MAX_BATCH_SIZE = 1 << 16
SUFFIX = ".omb"
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# progress(bytes coded by this step, compressed bits so far or None when unknown)
Progress = Callable[[int, "int | None"], None]


# ---- model identity and numerics --------------------------------------------------

def model_fingerprint(model: ByteModel) -> bytes:
    """SHA-256 over the model's architecture, config and every weight (name, dtype, shape, bytes)."""
    model = getattr(model, "_orig_mod", model)
    hasher = hashlib.sha256(json.dumps(config_document(model), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        hasher.update(f"\n{name} {tensor.dtype} {tensor.numel()}\n".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    return hasher.digest()


def quantized_frequencies(logits: torch.Tensor, precision: int = PRECISION) -> torch.Tensor:
    """Integer-valued float32 weights [B, 256], each row summing to exactly 2**precision - 256.

    constriction adds 1 to every weight (so every byte keeps non-zero mass) and, since the
    sum is exact, codes byte ``i`` with frequency ``weight[i] + 1`` out of ``2**precision``.
    Every intermediate is an integer below 2**24, hence exact in float32 in any summation order.
    """
    total = float(2**precision - NUM_BYTES)
    weights = torch.floor(torch.softmax(logits.float(), dim=-1) * total)
    remainder = total - weights.sum(dim=-1, keepdim=True)  # in [-few, 256]: give it to the top byte
    return weights.scatter_add_(-1, weights.argmax(dim=-1, keepdim=True), remainder)


def default_dtype(device: torch.device) -> str:
    return "bfloat16" if device.type == "cuda" else "float32"


@contextlib.contextmanager
def numerics(settings: CodingSettings) -> Iterator[None]:
    """Autocast to the coding dtype; plain float32 without TF32 (its rounding is a global switch)."""
    if settings.dtype != "float32":
        # no weight-cast cache: a captured CUDA graph must not keep casts that autocast frees on exit
        with torch.autocast(settings.device, dtype=_TORCH_DTYPES[settings.dtype], cache_enabled=False):
            yield
        return
    if settings.device != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def coding_model(model: ByteModel, settings: CodingSettings) -> ByteModel:
    """The model the coder steps: on CUDA a copy with weights in the coding dtype, so the KV
    cache and every matmul run at that width without re-casting weights each step. Encoder
    and decoder both make it; the fingerprint is always taken from the original weights."""
    if settings.device != "cuda" or settings.dtype == "float32":
        return model
    return copy.deepcopy(model).to(_TORCH_DTYPES[settings.dtype])


class _BatchStepper:
    """Steps ``rows`` chunks through the model's decoder; ``restart`` gives every row a fresh
    context and reuses the decoder (and its captured CUDA graphs)."""

    def __init__(self, model: ByteModel, rows: int, max_len: int, fast: bool):
        self.model, self.rows = model, rows
        self.decoder = model.decoder(rows, max_len, fast=fast)

    def restart(self) -> None:
        self.decoder.reset()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder.step(tokens)


@contextlib.contextmanager
def _stepping(model: ByteModel, settings: CodingSettings) -> Iterator[_BatchStepper]:
    """The stepper both directions code with, under the coding numerics, ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with numerics(settings):
            yield _BatchStepper(coding_model(model, settings), settings.batch_size,
                                settings.chunk_size, settings.fast)
    finally:
        model.train(was_training)


# ---- the coding plan --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Chunk:
    member: int
    start: int
    length: int


def plan_chunks(member_sizes: Sequence[int], chunk_size: int) -> list[Chunk]:
    """All chunks, longest first (stable), so the rows still coding are always a prefix."""
    chunks = [Chunk(index, start, min(chunk_size, size - start))
              for index, size in enumerate(member_sizes) for start in range(0, size, chunk_size)]
    return sorted(chunks, key=lambda chunk: -chunk.length)


def count_chunks(member_sizes: Sequence[int], chunk_size: int) -> int:
    return sum(-(-size // chunk_size) for size in member_sizes)


def _groups(chunks: list[Chunk], rows: int) -> list[list[Chunk]]:
    return [chunks[first : first + rows] for first in range(0, len(chunks), rows)]


def _run_group(
    step: _BatchStepper,
    lengths: np.ndarray,
    code_step: Callable[[int, np.ndarray], np.ndarray],
    progress: Progress | None,
    bits: Callable[[], int | None],
) -> None:
    """Step one group; ``code_step(t, frequencies of the active rows)`` codes position ``t`` and
    returns every row's byte at ``t`` (0 past a row's end: the dummy token), fed back next step."""
    device = step.model.device
    descending = -lengths
    tokens = torch.full((step.rows,), BOS, dtype=torch.long, device=device)
    step.restart()
    for t in range(int(lengths[0])):
        logits = step(tokens)
        active = int(np.searchsorted(descending, -t, side="left"))  # rows with length > t
        frequencies = quantized_frequencies(logits[:active]).cpu().numpy()
        column = code_step(t, frequencies)
        tokens = torch.from_numpy(column.astype(np.int64)).to(device)
        if progress is not None:
            progress(active, bits())


def _group_lengths(group: list[Chunk], rows: int) -> np.ndarray:
    lengths = np.zeros(rows, dtype=np.int64)  # padding rows have length 0 and only step dummies
    lengths[: len(group)] = [chunk.length for chunk in group]
    return lengths


# ---- settings -----------------------------------------------------------------------

def resolve_chunk_size(model: ByteModel, chunk_size: int | None) -> int:
    """Default: 64 KiB clamped to the model's context; an explicit size must fit the context
    (a chunk of n bytes takes n steps: BOS and its first n - 1 bytes)."""
    context = model.max_seq_len
    if chunk_size is None:
        return min(DEFAULT_CHUNK_SIZE, context)
    if not 1 <= chunk_size <= context:
        raise OmnibyteError(f"chunk size must be between 1 and the model's context of {context:,} bytes, "
                            f"got {chunk_size:,}")
    return chunk_size


def coding_settings(
    model: ByteModel,
    member_sizes: Sequence[int],
    chunk_size: int | None,
    batch_size: int,
    dtype: str,
    fast: bool | None,
) -> CodingSettings:
    """Resolve and check the options against the model and where it lives."""
    device = model.device
    chunk_size = resolve_chunk_size(model, chunk_size)
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise OmnibyteError(f"batch size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    dtype = default_dtype(device) if dtype == "auto" else dtype
    if dtype not in _TORCH_DTYPES:
        raise OmnibyteError(f"unknown dtype {dtype!r} (use auto, {', '.join(_TORCH_DTYPES)})")
    if device.type not in container.DEVICES:
        raise OmnibyteError(f"cannot code on device {device.type!r} (use cpu or cuda)")
    if device.type == "cpu" and dtype != "float32":
        raise OmnibyteError("on the CPU compression runs in float32 only")
    if fast is None:
        fast = device.type == "cuda"
    rows = max(1, min(batch_size, count_chunks(member_sizes, chunk_size)))
    return CodingSettings(device.type, dtype, chunk_size, rows, PRECISION, fast)


def _family():
    import constriction

    return constriction.stream.model.Categorical(perfect=False)


# ---- compress -----------------------------------------------------------------------

@torch.inference_mode()
def compress_members(
    members: Sequence[bytes],
    model: ByteModel,
    chunk_size: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dtype: str = "auto",
    fast: bool | None = None,
    progress: Progress | None = None,
    fingerprint: bytes | None = None,
) -> bytes:
    """Compress several byte strings into one container; each is coded independently (own chunks,
    each from BOS), only the header and the batch are shared. ``decompress_members`` inverts it."""
    import constriction

    members = [bytes(member) for member in members]
    sizes = [len(member) for member in members]
    settings = coding_settings(model, sizes, chunk_size, batch_size, dtype, fast)
    chunks = plan_chunks(sizes, settings.chunk_size)
    family = _family()
    streams: list[bytes] = []
    done_bits = 0
    with _stepping(model, settings) as stepper:
        for group in _groups(chunks, settings.batch_size):
            lengths = _group_lengths(group, settings.batch_size)
            matrix = np.zeros((int(lengths[0]), settings.batch_size), dtype=np.uint8)  # [t, row]
            for row, chunk in enumerate(group):
                matrix[: chunk.length, row] = np.frombuffer(
                    members[chunk.member], np.uint8, chunk.length, chunk.start)
            encoder = constriction.stream.queue.RangeEncoder()

            def encode_step(t: int, frequencies: np.ndarray) -> np.ndarray:
                symbols = matrix[t, : len(frequencies)].astype(np.int32)
                encoder.encode(symbols, family, frequencies)
                return matrix[t]

            _run_group(stepper, lengths, encode_step, progress, lambda: done_bits + encoder.num_bits())
            streams.append(encoder.get_compressed().astype("<u4").tobytes())
            done_bits += 8 * len(streams[-1])
    return container.pack(Container(
        fingerprint=fingerprint or model_fingerprint(model), settings=settings,
        member_sizes=tuple(sizes), original_digest=container.digest(members), streams=tuple(streams)))


def compress(data: bytes, model: ByteModel, chunk_size: int | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, **options) -> bytes:
    """Compress ``data`` with ``model`` (on the device it lives on); see ``compress_members``."""
    return compress_members([data], model, chunk_size, batch_size, **options)


# ---- decompress ---------------------------------------------------------------------

def check_compatible(header: Container, model: ByteModel, fingerprint: bytes | None = None) -> None:
    """Refuse a stream this model (as loaded) cannot decode, before doing any work."""
    settings = header.settings
    if settings.precision != PRECISION:
        raise OmnibyteError(f"unsupported coding precision {settings.precision} bits (this build codes with {PRECISION})")
    fingerprint = fingerprint or model_fingerprint(model)
    if header.fingerprint != fingerprint[: container.FINGERPRINT_BYTES]:
        raise OmnibyteError("wrong model: the stream was compressed with a different model "
                            f"(stream fingerprint {header.fingerprint.hex()[:12]}, model {fingerprint.hex()[:12]})")
    if model.device.type != settings.device:
        raise OmnibyteError(f"the stream was made on {settings.device} ({settings.dtype}) and decodes only "
                            f"there; the model is on {model.device.type}")
    if settings.chunk_size > model.max_seq_len:
        raise OmnibyteError("corrupted stream (chunk size exceeds the model's context)")
    chunks = count_chunks(header.member_sizes, settings.chunk_size)
    rows = max(1, min(settings.batch_size, chunks))
    if rows != settings.batch_size or len(header.streams) != -(-chunks // rows):
        raise OmnibyteError("corrupted stream (chunk and stream tables disagree)")
    if any(len(stream) % 4 for stream in header.streams):
        raise OmnibyteError("corrupted stream (a coded stream is not a whole number of words)")


@torch.inference_mode()
def decompress_members(
    blob: bytes,
    model: ByteModel,
    progress: Progress | None = None,
    fingerprint: bytes | None = None,
) -> list[bytes]:
    """Inverse of ``compress_members``; checks the model, the settings and the end-to-end digest."""
    import constriction

    header = container.unpack(blob)
    check_compatible(header, model, fingerprint)
    settings = header.settings
    chunks = plan_chunks(header.member_sizes, settings.chunk_size)
    members = [bytearray(size) for size in header.member_sizes]
    family = _family()
    with _stepping(model, settings) as stepper:
        for group, stream in zip(_groups(chunks, settings.batch_size), header.streams):
            lengths = _group_lengths(group, settings.batch_size)
            matrix = np.zeros((int(lengths[0]), settings.batch_size), dtype=np.uint8)
            decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(stream, "<u4").astype(np.uint32))

            def decode_step(t: int, frequencies: np.ndarray) -> np.ndarray:
                matrix[t, : len(frequencies)] = decoder.decode(family, frequencies)
                return matrix[t]

            _run_group(stepper, lengths, decode_step, progress, lambda: None)
            for row, chunk in enumerate(group):
                end = chunk.start + chunk.length
                members[chunk.member][chunk.start : end] = matrix[: chunk.length, row].tobytes()
    members = [bytes(member) for member in members]
    if container.digest(members) != header.original_digest:
        raise OmnibyteError(
            f"decoded data fails its checksum: the stream is corrupted, or it was made on another kind of "
            f"{settings.device} or software version ({settings.device}/{settings.dtype}) whose arithmetic "
            f"differs; nothing was written")
    return members


def decompress(blob: bytes, model: ByteModel, **options) -> bytes:
    """Inverse of ``compress``."""
    members = decompress_members(blob, model, **options)
    if len(members) != 1:
        raise OmnibyteError(f"the stream holds {len(members)} members; use decompress_members")
    return members[0]
