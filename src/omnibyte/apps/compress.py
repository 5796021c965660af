"""Lossless compression with any omnibyte model: range coding of its next-byte probabilities.

The input is cut into chunks of ``chunk_size`` bytes; each chunk is coded on its own, starting
from BOS. Chunks are coded ``batch_size`` at a time as the rows of one batch ("a group"): at
every step the model consumes one token per row through its incremental interface
(``model.decoder``: eager, or static-shape and CUDA-graph replayed when ``fast``), the
next-byte distributions are quantized to integer frequencies, and the encoder records the
interval (cumulative frequency, frequency) of every row's byte. After the group's last step,
a chunk the model codes in at least as many bits as it has is flagged raw and stored as it
is; the others are range-coded (``constriction``) into the group's stream, rows interleaved
step by step. The decoder runs the very same computation (same batch shape, device type,
dtype, path, and the raw rows' stored bytes as their tokens) and recovers each coded byte
before feeding it back, so it sees bit-identical frequencies.

With adaptation (``adapt=``) a float32 copy of the model takes one Adam step on every block of
bytes both sides already have (after every ``block`` steps of a group, on the block's bytes of
every row), under deterministic algorithms, so the decoder repeats the very same updates; a
``FreshModel`` (``scratch_model``) is rebuilt by the decoder from the recipe the container holds.
With no model, the built-in general model (``omnibyte.models.builtin``) codes, and the container
records its name, so decoding needs no model either.

With integer numerics (``numerics="integer"``, flat models) both sides step an
``omnibyte.models.integer.IntegerFlatModel`` quantized from the model on the CPU, whose
decoder returns integer frequencies that are bit-identical on any CPU or GPU: such a stream
decodes on any device, whatever the one it was made on.

Container format: ``omnibyte.apps.container``; spec and limits: docs/compression.md.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from omnibyte.apps import container
from omnibyte.apps.container import AdaptSettings, CodingSettings, Container, FreshModel, MixSettings
from omnibyte.apps.mixing import ContextMixer
from omnibyte.errors import OmnibyteError
from omnibyte.models.base import BOS, NUM_BYTES, ByteModel
from omnibyte.models.integer import IntegerFlatModel, integer_model
from omnibyte.models.builtin import BUILTIN_NAME, load_builtin_model, provenance_seq_len, require_builtin_model_dir
from omnibyte.models.registry import make_config, seeded
from omnibyte.models.serialization import FORMAT_VERSION, config_document, model_from_config

# cuBLAS reads its workspace setting when it starts: set here, before any CUDA work of a process
# that codes, so adaptation updates (deterministic algorithms) can use cuBLAS; a user's value wins
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

PRECISION = container.PRECISION  # constriction's range coder codes with 24-bit frequencies
MAX_BATCH_SIZE = container.MAX_BATCH_SIZE
ENCODE_SLICE = 1 << 20  # symbols per range-coder call (bounds the temporary parameter array)
SUFFIX = ".omb"
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NUMERICS = ("float", "integer")  # how the probabilities are computed (docs/compression.md)

# progress(bytes coded by this step, compressed bits so far (an estimate while a group codes) or None)
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
    """Autocast to the coding dtype; plain float32 without TF32 (its rounding is a global switch).
    Integer numerics need neither (their products are float64 or int64)."""
    if settings.integer:
        yield
        return
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
    if settings.integer or settings.device != "cuda" or settings.dtype == "float32":
        return model  # an integer model is stepped as it is
    return copy.deepcopy(model).to(_TORCH_DTYPES[settings.dtype])


class _BatchStepper:
    """Steps ``rows`` chunks through the model's decoder; ``restart`` gives every row a fresh
    context and reuses the decoder (and its captured CUDA graphs). The decoder (and on CUDA
    the coding copy of the model) is only made when a group first needs it, so a stream whose
    chunks are all raw decodes without running the model."""

    def __init__(self, model: ByteModel, settings: CodingSettings, max_len: int, adapter: "_Adapter | None" = None,
                 mix: MixSettings | None = None, input_bytes: int = 0):
        self.model, self.settings, self.max_len = model, settings, max_len
        self.rows = settings.batch_size
        self.device = model.device
        self.decoder = None
        self.adapter = adapter
        self.mixer = ContextMixer(mix, self.rows, input_bytes, self.device) if mix is not None else None

    def restart(self) -> None:
        if self.decoder is None:
            coder = self.adapter.coder if self.adapter else coding_model(self.model, self.settings)
            # integer numerics give the same integers on either path: CUDA graphs on CUDA
            fast = self.settings.fast or (self.settings.integer and self.device.type == "cuda")
            self.decoder = coder.decoder(self.rows, self.max_len, fast=fast)
        else:
            self.decoder.reset()
        if self.mixer is not None:
            self.mixer.start_group()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder.step(tokens)


@contextlib.contextmanager
def _stepping(model: ByteModel, settings: CodingSettings, max_len: int,
              adapt: AdaptSettings | None = None, mix: MixSettings | None = None,
              input_bytes: int = 0) -> Iterator[_BatchStepper]:
    """The stepper both directions code with, under the coding numerics, ``model`` in eval mode
    (never changed: adaptation trains a copy), mixing with context counts when ``mix`` (tables
    sized for ``input_bytes``)."""
    was_training = model.training
    model.eval()
    try:
        with numerics(settings), _no_grad(adapt is not None), coding_threads(settings.device):
            adapter = _Adapter(model, settings, adapt) if adapt else None
            yield _BatchStepper(model, settings, max_len, adapter, mix, input_bytes)
    finally:
        model.train(was_training)


# intra-op threads of CPU coding (0: the process's own count, ``configure_cpu_threads``). One
# thread wins next to a busy neighbour, where every parallel region of a small step waits for a
# descheduled thread (a 16 x 320 int8 product: 7.8 ms on 2 threads, 62 us on one; `tiny` 3.5
# against 12.8 KB/s), and loses on a quiet machine (the built-in model on 100 KB: 222 s on one
# thread, 175 s on two): bench/RESULTS.md, *CPU decoding speed*. Results do not depend on the
# count (MKL's conditional reproducibility; every other kernel reduces each row on one thread),
# so streams decode whatever count either side ran. ``OMP_NUM_THREADS`` overrides.
CPU_CODING_THREADS = 0


@contextlib.contextmanager
def coding_threads(device_type: str) -> Iterator[None]:
    """``CPU_CODING_THREADS`` intra-op threads while coding on the CPU (or ``OMP_NUM_THREADS``
    when set; never more than the process has), restored after."""
    wanted = CPU_CODING_THREADS
    with contextlib.suppress(ValueError):
        wanted = max(1, int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0]))
    if device_type != "cpu" or not wanted:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(min(saved, wanted))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _no_grad(adapting: bool):
    """Inference mode, except while adapting: the adapted copy's weights must stay ordinary
    tensors that autograd can train (inference-mode tensors cannot be saved for backward)."""
    return torch.inference_mode(False) if adapting else torch.inference_mode()


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` around each adaptation update only (the
    caller's setting is restored after; the decoder's steps are the same kernels as without
    adaptation, whose reproducibility the format already rests on, and CUDA-graph capture must not
    meet deterministic-only kernels): both sides of an adapted stream must compute bit-identical
    gradients. On CUDA cuBLAS also needs a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, set if unset)."""
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


# ---- online adaptation ----------------------------------------------------------------

DEFAULT_ADAPT_BLOCK = 64  # bytes per row between updates
# a fresh model learns with larger steps (nncp). A trained model loses its training at 1e-3: the
# built-in model's held-out 8 KB (bench/RESULTS.md) came out 30-55% larger than without
# adaptation (prose 2,311 bytes, C 2,928, MIDI 1,481), at 1e-4 prose 1,691 (5% smaller than
# without), C 1,899 (the same), MIDI 1,261 (22% larger)
DEFAULT_ADAPT_LR = {"trained": 1e-4, "scratch": 3e-3}


def adapt_settings(lr: float | None = None, block: int | None = None, scratch: bool = False) -> AdaptSettings:
    """The adaptation schedule, defaults filled in and every value checked (one-line errors)."""
    adapt = AdaptSettings(block=DEFAULT_ADAPT_BLOCK if block is None else int(block),
                          lr=DEFAULT_ADAPT_LR["scratch" if scratch else "trained"] if lr is None else float(lr))
    problem = adapt.problem()
    if problem:
        raise OmnibyteError(f"bad adaptation setting: {problem} (lr in (0, 1], block in 1..{container.MAX_ADAPT_BLOCK:,})")
    return adapt


class _Adapter:
    """Dynamic evaluation: a float32 copy of the model (``trainee``) that an Adam step trains on
    every block of bytes both sides already have; ``coder`` is what the decoder steps (the
    trainee itself, or on CUDA a copy in the coding dtype whose weights are refreshed in place
    after each update, so captured CUDA graphs see them)."""

    def __init__(self, model: ByteModel, settings: CodingSettings, adapt: AdaptSettings):
        self.settings, self.adapt = settings, adapt
        self.trainee = copy.deepcopy(getattr(model, "_orig_mod", model)).float().eval()
        for parameter in self.trainee.parameters():
            parameter.requires_grad_(True)
        self.parameters = [p for p in self.trainee.parameters()]
        cuda = settings.device == "cuda"
        self.optimizer = torch.optim.Adam(self.parameters, lr=adapt.lr, betas=(adapt.beta1, adapt.beta2),
                                          eps=adapt.eps, foreach=cuda, fused=False)
        self.coder = coding_model(self.trainee, settings)
        self.pairs = ([] if self.coder is self.trainee else
                      list(zip(self.coder.parameters(), self.trainee.parameters())))
        self.updates = 0

    def update(self, matrix: np.ndarray, lengths: np.ndarray, start: int, end: int) -> None:
        """One optimizer step on bytes ``[start, end)`` of every row still coding there (a prefix
        of the rows, so the batch shape is the same on both sides): inputs are the byte before
        each (BOS at 0), the loss the mean cross-entropy over the bytes that exist."""
        active = int(np.count_nonzero(lengths > start))
        if not active:
            return
        device = self.trainee.device
        targets = torch.from_numpy(np.ascontiguousarray(matrix[start:end, :active].T).astype(np.int64)).to(device)
        first = (torch.full((active, 1), BOS, dtype=torch.long) if start == 0 else
                 torch.from_numpy(matrix[start - 1, :active].astype(np.int64))[:, None]).to(device)
        inputs = torch.cat([first, targets[:, :-1]], dim=1)
        mask = None
        if int(lengths[active - 1]) < end:  # a row ends inside the block
            positions = torch.arange(start, end)[None, :]
            mask = (positions < torch.from_numpy(lengths[:active].astype(np.int64))[:, None]).to(device)
        with deterministic(True), torch.enable_grad():
            loss = self.trainee.loss(inputs, targets, mask)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with deterministic(True), torch.no_grad():
            if self.adapt.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.parameters, self.adapt.clip, foreach=self.settings.device == "cuda")
            self.optimizer.step()
            for coded, trained in self.pairs:
                coded.copy_(trained)
        self.updates += 1


def _block_ends(steps: int, block: int) -> list[int]:
    """Where a group of ``steps`` steps updates the model: after every ``block`` steps and after its last."""
    return list(range(block, steps, block)) + ([steps] if steps else [])


# ---- models built from scratch ------------------------------------------------------------

def scratch_model(arch: str = "flat", preset: str = "tiny", seed: int = 0, **overrides) -> FreshModel:
    """The recipe of a freshly initialised model (``--model none``): its config document and
    the seed of its initial weights. The container records it; ``build_scratch`` rebuilds it."""
    try:
        config = make_config(arch, preset, **overrides)
    except ValueError as error:  # unknown arch or preset, a bad field
        raise OmnibyteError(str(error)) from None
    document = {"format": FORMAT_VERSION, "arch": arch, "config": config.to_dict()}
    return FreshModel(json.dumps(document, sort_keys=True, separators=(",", ":")), int(seed))


def build_scratch(recipe: FreshModel, device: str | torch.device = "cpu") -> ByteModel:
    """The model a recipe describes, with the same initial weights on every machine that has
    the same torch (the stream's fingerprint checks that). Built on the CPU, then moved."""
    with seeded(recipe.seed):
        model = model_from_config(json.loads(recipe.document), source="the stream's model section")
    return model.to(device).eval()


# ---- the coding plan --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """Every chunk (in member, offset order: the order of the raw-chunk bitmap) and the order
    they are coded in: longest first (stable), so the rows still coding are always a prefix."""

    starts: np.ndarray  # [chunks] offset in the members' concatenation
    lengths: np.ndarray  # [chunks]
    order: np.ndarray  # [chunks] chunk indices in coding order

    @property
    def longest(self) -> int:
        return int(self.lengths[self.order[0]]) if len(self.order) else 0

    def groups(self, rows: int) -> list[np.ndarray]:
        """The chunk indices of every group, in row order."""
        return [self.order[first : first + rows] for first in range(0, len(self.order), rows)]


def plan_chunks(member_sizes: Sequence[int], chunk_size: int) -> Plan:
    lengths = container.chunk_lengths(member_sizes, chunk_size)
    starts = np.cumsum(lengths) - lengths
    return Plan(starts, lengths, np.argsort(-lengths, kind="stable"))


def count_chunks(member_sizes: Sequence[int], chunk_size: int) -> int:
    return container.count_chunks(member_sizes, chunk_size)


def _padded(values: np.ndarray, rows: int, fill=0) -> np.ndarray:
    out = np.full(rows, fill, dtype=values.dtype)  # padding rows have length 0 and only step dummies
    out[: len(values)] = values
    return out


def _run_group(
    step: _BatchStepper,
    lengths: np.ndarray,
    steps: int,
    code_step: Callable[[int, int, torch.Tensor], torch.Tensor],
    progress: Progress | None,
    bits: Callable[[], int | None],
    after_step: Callable[[int], None] | None = None,
) -> int:
    """Step one group ``steps`` times; ``code_step(t, active rows, their quantized frequencies)``
    codes position ``t`` and returns every row's token for the next step (its byte at ``t``; 0,
    the dummy token, past a row's end); ``after_step(steps done)`` adapts the model. Returns the
    bytes reported to ``progress``."""
    descending = -lengths
    tokens = torch.full((step.rows,), BOS, dtype=torch.long, device=step.device)
    step.restart()
    done = 0
    for t in range(steps):
        logits = step(tokens)  # an integer model's decoder returns the frequencies themselves
        active = int(np.searchsorted(descending, -t, side="left"))  # rows with length > t
        if step.mixer is not None:  # every row, so that no shape depends on ``active``
            logits = step.mixer.mix(logits)
        weights = logits[:active] if step.settings.integer else quantized_frequencies(logits[:active])
        tokens = code_step(t, active, weights)
        if step.mixer is not None:
            step.mixer.update(tokens, active)
        done += active
        if progress is not None:
            progress(active, bits())
        if after_step is not None:
            after_step(t + 1)
    return done


# The encoder knows every byte, so with integer numerics (which give the same integers for a
# position whether it is stepped alone or scored with its whole chunk: tests/test_compress_integer.py)
# it scores each group in whole-chunk passes instead of one step per byte. Only the decoder,
# which learns each byte as it decodes it, has to step. False: step like the decoder (the
# reference path of the tests).
PARALLEL_INTEGER_ENCODING = True
# score elements ([rows, heads, piece, context] integers) one pass may make: bounds the memory
# (int64: 8 MiB on a CPU, 1 GiB on a GPU per tensor; a pass holds a few such tensors). On the CPU,
# larger passes are slower: the built-in model on a 21 KB file took 72 s at 2**25 (256 MiB
# tensors, mmapped and zero-filled anew on every pass: 41 s in the kernel) and 25 s at 2**20,
# with the same stream (bench/RESULTS.md, "CPU decoding speed")
ENCODE_PASS_ELEMENTS = {"cpu": 2**20, "cuda": 2**27}


def _encode_all_positions(step: _BatchStepper, matrix: np.ndarray, lengths: np.ndarray, left: np.ndarray,
                          frequency: np.ndarray, progress: Progress | None, done_bits: int) -> None:
    """Fill ``left``/``frequency`` [steps, rows] with the intervals of the group's bytes
    ``matrix`` [steps, rows] (rows ``lengths`` long, longest first), scoring whole pieces of
    every row at once through ``Decoder.extend``."""
    steps, rows = matrix.shape
    tokens = np.full((rows, steps), BOS, dtype=np.int64)
    tokens[:, 1:] = matrix[:-1].T
    tokens = torch.from_numpy(tokens).to(step.device)
    symbols = torch.from_numpy(matrix.T.astype(np.int64)).to(step.device)  # [rows, steps]
    heads = step.model.stack_config.num_query_heads
    budget = ENCODE_PASS_ELEMENTS.get(step.device.type, ENCODE_PASS_ELEMENTS["cpu"])
    piece = max(1, min(steps, budget // (rows * heads * steps)))
    step.restart()
    bits = 0.0
    for start in range(0, steps, piece):
        counts = np.clip(lengths - start, 0, piece)
        if not counts.any():
            break
        width = int(counts.max())
        weights = step.decoder.extend(tokens[:, start : start + width], counts)  # [rows, width, 256]
        valid = torch.arange(width, device=step.device)[None, :] < torch.from_numpy(counts).to(step.device)[:, None]
        below, picked = (interval.cpu().numpy() for interval in
                         _intervals(weights[valid], symbols[:, start : start + width][valid]))
        where = valid.cpu().numpy()
        left[start : start + width].T[where] = below  # t-major views of [rows, width]
        frequency[start : start + width].T[where] = picked
        if progress is not None:
            bits += float(np.sum(PRECISION - np.log2(picked.astype(np.float64))))
            progress(int(counts.sum()), done_bits + int(bits))


class _StepIntervals:
    """The coded intervals of a group's bytes, step by step (``code_step``).

    On a GPU they stay on the device until the group ends: the host never waits for a step
    (one copy per group instead of one per step), so it queues the next step while this one
    runs; with ``track_bits`` (a progress bar) the bits are summed there too and read every
    ``BITS_EVERY`` steps (each read waits for the GPU). On the CPU, where nothing runs ahead,
    each step's intervals go straight into the host arrays: there numpy costs less than the
    tensor operations (bench/RESULTS.md, issue 13 s19, compression)."""

    BITS_EVERY = 256
    KEEP_ON_DEVICE: bool | None = None  # None: on any device but the CPU (tests force True there)

    def __init__(self, left: np.ndarray, frequency: np.ndarray, symbols: torch.Tensor, done_bits: int,
                 track_bits: bool):
        self.left, self.frequency = left, frequency  # host arrays [steps, rows], filled by ``finish``
        self.symbols, self.done_bits, self.track_bits = symbols, done_bits, track_bits  # symbols on the device
        on_device = self.KEEP_ON_DEVICE
        self.on_device = symbols.device.type != "cpu" if on_device is None else on_device
        if self.on_device:
            # copies on a GPU; on the CPU (tests) the same memory, which ``finish`` leaves as it is
            self.device_left = torch.from_numpy(left).to(symbols.device)
            self.device_frequency = torch.from_numpy(frequency).to(symbols.device)
            self.device_bits = torch.zeros((), dtype=torch.float64, device=symbols.device)
        self.steps_done, self.coded_bits = 0, 0.0

    def code_step(self, t: int, active: int, weights: torch.Tensor) -> torch.Tensor:
        below, picked = _intervals(weights, self.symbols[t, :active])
        if self.on_device:
            self.device_left[t, :active], self.device_frequency[t, :active] = below, picked
            if self.track_bits:
                self.device_bits += (PRECISION - torch.log2(picked.double())).sum()
        else:
            self.left[t, :active], self.frequency[t, :active] = below.numpy(), picked.numpy()
            if self.track_bits:
                self.coded_bits += float(np.sum(PRECISION - np.log2(picked.numpy())))
        self.steps_done = t + 1
        return self.symbols[t]

    def bits(self) -> int:
        if self.on_device and self.track_bits and (self.steps_done - 1) % self.BITS_EVERY == 0:
            self.coded_bits = self.device_bits.item()
        return self.done_bits + int(self.coded_bits)

    def finish(self) -> None:
        if self.on_device:
            self.left[:], self.frequency[:] = self.device_left.cpu().numpy(), self.device_frequency.cpu().numpy()


class _GroupUpdates:
    """The updates of one group under adaptation: after every ``block`` steps and after the
    group's last (of its longest row, raw or not), each on the bytes of that block; none after
    the stream's last block (nothing is coded after it). The decoder, which stops stepping after
    its last coded row, makes the remaining ones in ``finish`` from the raw rows' bytes."""

    def __init__(self, adapter: "_Adapter | None", matrix: np.ndarray, lengths: np.ndarray, last_group: bool):
        self.adapter, self.matrix, self.lengths = adapter, matrix, lengths
        steps = int(lengths[0])
        self.ends = _block_ends(steps, adapter.adapt.block) if adapter else []
        if last_group and self.ends:
            self.ends.pop()
        self.done = 0  # updates made

    def __call__(self, steps_done: int) -> None:
        while self.done < len(self.ends) and self.ends[self.done] <= steps_done:
            end = self.ends[self.done]
            start = self.ends[self.done - 1] if self.done else 0
            self.adapter.update(self.matrix, self.lengths, start, end)
            self.done += 1

    def finish(self) -> None:
        self(int(self.lengths[0]))


# ---- settings -----------------------------------------------------------------------

# rows a step runs at once by default: enough to amortise a step's fixed cost (measured with
# bench/bench_compress_cpu.py on 2 CPU cores; on CUDA a step of 1,024 rows costs little more than one of 64)
DEFAULT_ROWS = {"cpu": 64, "cuda": 1024}
MIN_DEFAULT_CHUNK = 1024  # shorter chunks cost ratio (every chunk starts from BOS) for little speed
MIN_ADAPT_UPDATES = 64  # adapting, rows * block bytes make one update: enough updates to learn from


def context_limit(model: ByteModel, train_seq_len: int | None = None) -> int:
    """The longest default chunk: what the model was trained on (when known), at most its context."""
    context = model.max_seq_len
    return min(context, train_seq_len) if train_seq_len else context


def default_layout(model: ByteModel, member_sizes: Sequence[int], device_type: str,
                   train_seq_len: int | None = None, adapt_block: int | None = None) -> tuple[int, int]:
    """(chunk size, rows) for inputs of these sizes: chunks as long as the model was trained on
    (the best ratio), shortened -- down to ``MIN_DEFAULT_CHUNK`` -- until the input fills the
    device's rows (the best speed); rows: the device's default, at most one per chunk. Adapting
    (``adapt_block``), fewer rows, so that the model makes at least ``MIN_ADAPT_UPDATES`` updates."""
    limit = context_limit(model, train_seq_len)
    rows = DEFAULT_ROWS.get(device_type, DEFAULT_ROWS["cpu"])
    total = sum(member_sizes)
    if adapt_block:
        rows = max(1, min(rows, total // (adapt_block * MIN_ADAPT_UPDATES)))
    chunk = max(min(MIN_DEFAULT_CHUNK, limit), -(-total // rows))
    chunk = min(limit, chunk)
    return chunk, max(1, min(rows, count_chunks(member_sizes, chunk)))


def resolve_chunk_size(model: ByteModel, chunk_size: int | None, train_seq_len: int | None = None) -> int:
    """Default: the model's trained length (or context); an explicit size must fit the context
    (a chunk of n bytes takes n steps: BOS and its first n - 1 bytes)."""
    context = model.max_seq_len
    if chunk_size is None:
        return context_limit(model, train_seq_len)
    if not 1 <= chunk_size <= context:
        raise OmnibyteError(f"chunk size must be between 1 and the model's context of {context:,} bytes, "
                            f"got {chunk_size:,}")
    return chunk_size


def coding_settings(
    model: ByteModel,
    member_sizes: Sequence[int],
    chunk_size: int | None,
    batch_size: int | None,
    dtype: str,
    fast: bool | None,
    train_seq_len: int | None = None,
    adapt_block: int | None = None,
    integer: bool = False,
) -> CodingSettings:
    """Resolve and check the options against the model and where it lives; chunk size and rows
    left out (None) are picked by ``default_layout``. ``integer``: integer numerics (no dtype,
    no fast path: the stream records float32 and fast = False)."""
    device = model.device
    if integer:
        if dtype not in ("auto", "float32"):
            raise OmnibyteError(f"--dtype {dtype} applies to float numerics; integer numerics have no dtype")
        dtype, fast = "float32", False
    if chunk_size is None:
        default_chunk, default_rows = default_layout(model, member_sizes, device.type, train_seq_len, adapt_block)
        chunk_size = default_chunk
        batch_size = default_rows if batch_size is None else batch_size
    chunk_size = resolve_chunk_size(model, chunk_size)
    if batch_size is None:
        batch_size = DEFAULT_ROWS.get(device.type, DEFAULT_ROWS["cpu"])
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
    return CodingSettings(device.type, dtype, chunk_size, rows, PRECISION, bool(fast), integer)


def max_compressed_size(member_sizes: Sequence[int], chunk_size: int, batch_size: int) -> int:
    """The most bytes ``compress_members`` writes for members of these sizes, with this
    (resolved) chunk size and batch size: the expansion bound of docs/compression.md.

    Every chunk costs its own length at most (raw), every group's stream is shorter than
    the group's coded bytes (else the whole group is stored raw), and the header adds the
    fixed 57 bytes, the two tables and one bit per chunk."""
    chunks = count_chunks(member_sizes, chunk_size)
    rows = max(1, min(batch_size, chunks))
    plan = plan_chunks(member_sizes, chunk_size)
    group_bytes = [int(plan.lengths[group].sum()) for group in plan.groups(rows)]
    varint = lambda value: len(container.varint(value))  # noqa: E731
    return (sum(member_sizes) + container.FIXED_OVERHEAD
            + varint(len(member_sizes)) + sum(varint(size) for size in member_sizes)
            + varint(len(group_bytes)) + sum(varint(size) for size in group_bytes)
            + container.bitmap_bytes(chunks))


# ---- range coding -------------------------------------------------------------------

def _family():
    import constriction

    return constriction.stream.model.Categorical(perfect=False)


def _interval_models(left: np.ndarray, frequency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 3-symbol categorical per coded byte whose quantized interval is exactly ``(left,
    frequency)`` out of 2**24, and the symbol to code with it.

    ``Categorical(perfect=False)`` gives symbol ``i`` of weights summing exactly to
    ``2**24 - n`` the interval ``[sum(w[:i]) + i, + w[i] + 1)``, which is how the 256-byte
    frequencies are coded too (``quantized_frequencies``): coding the byte with its own
    interval writes the very same bits, at a fraction of the cost, and needs only two numbers
    per byte to be kept until the group's raw chunks are known."""
    total = 2**PRECISION
    n = len(left)
    left = left.astype(np.int64)
    frequency = frequency.astype(np.int64)
    params = np.empty((n, 3), dtype=np.float32)
    symbols = np.ones(n, dtype=np.int32)  # general case: the middle symbol
    params[:, 0], params[:, 1], params[:, 2] = left - 1, frequency - 1, total - 1 - left - frequency
    first = left == 0  # starts at 0: the first symbol
    params[first, 0], params[first, 1], params[first, 2] = frequency[first] - 1, 0, total - 2 - frequency[first]
    symbols[first] = 0
    last = left + frequency == total  # ends at the total: the last symbol
    params[last, 0], params[last, 1], params[last, 2] = left[last] - 2, 0, frequency[last] - 1
    symbols[last] = 2
    return symbols, params


@functools.lru_cache(maxsize=None)
def _check_interval_coding() -> None:
    """Once per process: coding bytes by their intervals writes what coding them with the
    256-byte frequencies writes (so a constriction that quantizes differently is caught
    before anything is compressed with it)."""
    import constriction

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(512, NUM_BYTES, generator=generator) * torch.tensor([0.1, 3.0, 30.0, 300.0]).repeat(128)[:, None]
    weights = quantized_frequencies(logits)
    symbols = torch.randint(0, NUM_BYTES, (512,), generator=generator)
    symbols[::5] = weights[::5].argmax(-1)
    symbols[1::7], symbols[2::7] = 0, NUM_BYTES - 1
    left, frequency = _intervals(weights, symbols)
    direct = constriction.stream.queue.RangeEncoder()
    direct.encode(symbols.numpy().astype(np.int32), _family(), weights.numpy())
    by_interval = constriction.stream.queue.RangeEncoder()
    interval_symbols, params = _interval_models(left.numpy(), frequency.numpy())
    by_interval.encode(interval_symbols, _family(), params)
    if not np.array_equal(direct.get_compressed(), by_interval.get_compressed()):
        raise OmnibyteError("this version of constriction quantizes probabilities differently from the one "
                            "omnibyte was built for; compression is disabled (decompression still works)")


def _intervals(weights: torch.Tensor, symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(left cumulative frequency, frequency) out of 2**24 of each row's symbol, as coded."""
    counts = weights.to(torch.int64)  # integer-valued float32 below 2**24: exact
    picked = counts.gather(1, symbols[:, None]).squeeze(1)
    below = counts.cumsum(1).gather(1, symbols[:, None]).squeeze(1) - picked
    return below + symbols, picked + 1


def _encode(left: np.ndarray, frequency: np.ndarray) -> bytes:
    """Range-code bytes given by their intervals, in order; the stream's bytes."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    family = _family()
    for first in range(0, len(left), ENCODE_SLICE):
        symbols, params = _interval_models(left[first : first + ENCODE_SLICE], frequency[first : first + ENCODE_SLICE])
        encoder.encode(symbols, family, params)
    return encoder.get_compressed().astype("<u4").tobytes()


def _corrupted(group: int, error: BaseException) -> OmnibyteError:
    return OmnibyteError(f"corrupted stream (group {group} cannot be range-decoded: the coded data is invalid "
                         f"for the model's probabilities; {type(error).__name__})")


def _fatal(error: BaseException) -> bool:
    """Errors that are not the range decoder refusing its input."""
    return isinstance(error, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError))


class _GroupDecoder:
    """constriction's range decoder for one group, with every failure it can raise (an
    ``AssertionError`` or a Rust panic on invalid data among them) turned into one
    "corrupted stream" ``OmnibyteError``."""

    def __init__(self, stream: bytes, group: int):
        import constriction

        self.group, self.family = group, _family()
        try:
            self.decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(stream, "<u4").astype(np.uint32))
        except BaseException as error:  # noqa: BLE001 -- a panic is a BaseException
            if _fatal(error):
                raise
            raise _corrupted(group, error) from None

    def decode(self, frequencies: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.decoder.decode(self.family, frequencies))
        except BaseException as error:  # noqa: BLE001
            if _fatal(error):
                raise
            raise _corrupted(self.group, error) from None

    def finish(self) -> None:
        """Every coded word must have been used: an encoder never writes more."""
        try:
            exhausted = self.decoder.maybe_exhausted()
        except BaseException as error:  # noqa: BLE001
            if _fatal(error):
                raise
            raise _corrupted(self.group, error) from None
        if not exhausted:
            raise OmnibyteError(f"corrupted stream (group {self.group} has coded data left over after its last byte)")


# ---- compress -----------------------------------------------------------------------

def _group_matrix(data: np.ndarray, plan: Plan, group: np.ndarray, rows: int, steps: int,
                  which: np.ndarray | None = None) -> np.ndarray:
    """[steps, rows] bytes of the group's chunks (of the rows in ``which``), 0 past each end."""
    matrix = np.zeros((steps, rows), dtype=np.uint8)
    for row, chunk in enumerate(group):
        if which is None or which[row]:
            length = min(int(plan.lengths[chunk]), steps)
            start = int(plan.starts[chunk])
            matrix[:length, row] = data[start : start + length]
    return matrix


@torch.inference_mode()
def compress_members(
    members: Sequence[bytes],
    model: ByteModel | FreshModel | None = None,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    dtype: str = "auto",
    fast: bool | None = None,
    progress: Progress | None = None,
    fingerprint: bytes | None = None,
    adapt: AdaptSettings | bool | None = None,
    device: str | torch.device = "cpu",
    train_seq_len: int | None = None,
    numerics: str = "auto",
    builtin: str | None = None,
    mix: MixSettings | bool | None = None,
) -> bytes:
    """Compress several byte strings into one container; each is coded independently (own chunks,
    each from BOS), only the header and the batch are shared. ``decompress_members`` inverts it.

    ``model`` None: the built-in general model, loaded on ``device``; ``builtin`` (a name) says
    that ``model`` is that built-in model, so the container names it and decoding needs no model.

    A chunk that the model codes in at least 8 bits per byte is stored raw, and so is every
    chunk of a group whose stream would not be shorter than its coded chunks: no input grows
    by more than ``max_compressed_size`` allows.

    ``adapt`` (``True`` for the default schedule, or ``AdaptSettings``): the model keeps learning
    from the bytes already coded (a copy is trained; ``model`` is never changed). ``model`` may be
    a ``FreshModel`` (``scratch_model(...)``): it is built on ``device`` from its recipe, which the
    container records, and always adapts. ``chunk_size``/``batch_size`` default to what
    ``default_layout`` picks for the input size and the device (``train_seq_len``: the longest
    sequence the model was trained on, when known: no default chunk is longer).

    ``numerics="integer"`` (flat models): the probabilities come from an integer copy of the
    model (``omnibyte.models.integer``; ``model`` may be that ``IntegerFlatModel`` already),
    bit-identical on any CPU or GPU, so the stream decodes on any device; it does not adapt.
    ``"auto"`` (the default) is integer for the built-in model when it does not adapt, else float.

    ``mix`` (``MixSettings``, True for the defaults, False for none): the model's probabilities
    are mixed with counts of the input's own contexts (``omnibyte.apps.mixing``); it needs float
    numerics. None (the default): for a model from scratch, which learns from nothing and
    needs the counts most; not for a trained one, whose held-out prose it made larger
    (bench/RESULTS.md, issue 14 s21)."""
    _check_interval_coding()
    if model is None:
        directory = require_builtin_model_dir()
        model, builtin = load_builtin_model(device), BUILTIN_NAME
        train_seq_len = train_seq_len or provenance_seq_len(directory)
    integer = _integer_numerics(resolve_numerics(numerics, builtin, adapt), model, adapt)
    fresh = model if isinstance(model, FreshModel) else None
    if fresh is not None and builtin is not None:
        raise OmnibyteError("a model built from scratch is not a built-in model")
    if fresh is not None:
        model = build_scratch(fresh, device)
        adapt = True if adapt in (None, False) else adapt
    if adapt is True:
        adapt = adapt_settings(scratch=fresh is not None)
    elif adapt is False:
        adapt = None
    elif adapt is not None and adapt.problem():
        raise OmnibyteError(f"bad adaptation setting: {adapt.problem()}")
    mix = _mix_settings(mix, fresh is not None, integer)
    if integer:  # the integer model is what codes, and what the fingerprint identifies
        model = model if isinstance(model, IntegerFlatModel) else integer_model(model)
        fingerprint = model.fingerprint()
    members = [bytes(member) for member in members]
    sizes = [len(member) for member in members]
    settings = coding_settings(model, sizes, chunk_size, batch_size, dtype, fast, train_seq_len,
                               adapt.block if adapt else None, integer)
    rows = settings.batch_size
    plan = plan_chunks(sizes, settings.chunk_size)
    data = np.frombuffer(b"".join(members), dtype=np.uint8)
    raw = np.zeros(len(plan.lengths), dtype=bool)
    streams: list[bytes] = []
    done_bits = 0
    groups = plan.groups(rows)
    with _stepping(model, settings, plan.longest, adapt, mix, len(data)) as stepper:
        for index, group in enumerate(groups):
            lengths = _padded(plan.lengths[group], rows)
            steps = int(lengths[0])
            matrix = _group_matrix(data, plan, group, rows, steps)
            symbols = torch.from_numpy(matrix.astype(np.int64)).to(stepper.device)  # [t, row]
            left = np.zeros((steps, rows), dtype=np.int64)
            frequency = np.full((steps, rows), 2**PRECISION, dtype=np.int64)  # costs 0 bits past the end
            updates = _GroupUpdates(stepper.adapter, matrix, lengths, index == len(groups) - 1)
            if settings.integer and stepper.adapter is None and PARALLEL_INTEGER_ENCODING:
                _encode_all_positions(stepper, matrix, lengths, left, frequency, progress, done_bits)
            else:
                intervals = _StepIntervals(left, frequency, symbols, done_bits, track_bits=progress is not None)
                _run_group(stepper, lengths, steps, intervals.code_step, progress, intervals.bits,
                           updates if stepper.adapter else None)
                intervals.finish()
            updates.finish()
            costs = np.sum(PRECISION - np.log2(frequency.astype(np.float64)), axis=0)  # bits per row
            coded = (lengths > 0) & (costs < 8 * lengths)
            stream = b""
            if coded.any():
                mask = coded[None, :] & (np.arange(steps)[:, None] < lengths[None, :])  # t-major, rows in order
                stream = _encode(left[mask], frequency[mask])
                if len(stream) >= int(lengths[coded].sum()):  # the group's stream saves nothing
                    coded[:], stream = False, b""
            raw[group] = ~coded[: len(group)]
            streams.append(stream)
            done_bits += 8 * len(stream) + 8 * int(lengths[~coded].sum())
    raw_data = b"".join(data[plan.starts[chunk] : plan.starts[chunk] + plan.lengths[chunk]].tobytes()
                        for chunk in np.flatnonzero(raw))
    return container.pack(Container(
        fingerprint=fingerprint or model_fingerprint(model), settings=settings,
        member_sizes=tuple(sizes), original_digest=container.digest(members), streams=tuple(streams),
        raw_bitmap=np.packbits(raw, bitorder="little").tobytes(), raw_data=raw_data, adapt=adapt, fresh=fresh,
        builtin=builtin, mix=mix))


def _mix_settings(mix: MixSettings | bool | None, fresh: bool, integer: bool) -> MixSettings | None:
    """The context mixing a stream codes with (``compress_members`` says which); one-line refusals."""
    if mix is None:
        mix = fresh
    if mix is False:
        return None
    if integer:
        raise OmnibyteError("integer numerics do not mix with context counts: drop the mixing, or use float numerics")
    mix = MixSettings() if mix is True else mix
    if mix.problem():
        raise OmnibyteError(f"bad context mixing setting: {mix.problem()}")
    return mix


def resolve_numerics(numerics: str, builtin: str | None, adapt) -> str:
    """``"auto"``: integer numerics for the built-in model (its streams then decode on any
    machine) unless it adapts, which only float numerics can; float for any other model."""
    if numerics != "auto":
        return numerics
    return "integer" if builtin is not None and adapt in (None, False) else "float"


def _integer_numerics(numerics: str, model, adapt) -> bool:
    """Whether ``numerics`` asks for integer numerics; the one-line refusals of what they cannot do."""
    if numerics not in NUMERICS:
        raise OmnibyteError(f"unknown numerics {numerics!r} (use {' or '.join(NUMERICS)})")
    if numerics == "float":
        if isinstance(model, IntegerFlatModel):
            raise OmnibyteError("an integer model codes with numerics='integer' only")
        return False
    if isinstance(model, FreshModel) or adapt not in (None, False):
        raise OmnibyteError("integer numerics do not adapt: drop --adapt (a model from scratch, --model none, "
                            "always adapts)")
    return True


def compress(data: bytes, model: ByteModel | FreshModel | None = None, chunk_size: int | None = None,
             batch_size: int | None = None, **options) -> bytes:
    """Compress ``data`` with ``model`` (on the device it lives on; None: the built-in model);
    see ``compress_members``."""
    return compress_members([data], model, chunk_size, batch_size, **options)


def compress_adapted_or_plain(data: bytes, model: ByteModel | None, adapt: AdaptSettings | bool = True,
                              plain_progress: Progress | None = None, **options) -> tuple[bytes, bool]:
    """``compress(data, model, adapt=adapt, **options)``, unless coding without adaptation is
    smaller: adapting costs an adapt section (45 bytes) in the stream and needs many updates to
    pay, so a trained model on a small input often codes it better as it is (bench/RESULTS.md,
    *Held-out compression*). Both streams are made (the plain one first, reporting to
    ``plain_progress``; the adapted one to ``options["progress"]``) and the smaller is returned,
    with whether it adapts; the container says which, so decoding needs nothing more. A model
    from scratch (``FreshModel``) cannot code without adapting and is refused here."""
    if isinstance(model, FreshModel):
        raise OmnibyteError("a model from scratch always adapts: call compress()")
    progress = options.pop("progress", None)
    plain_options = dict(options, mix=False)  # plain: neither adapting nor mixing
    builtin = options.get("builtin") or (BUILTIN_NAME if model is None else None)
    if resolve_numerics(options.get("numerics", "auto"), builtin, None) == "integer":
        plain_options["dtype"] = "auto"  # without adapting, the built-in model codes in integers: no dtype
    plain = compress(data, model, **plain_options, adapt=None, progress=plain_progress)
    adapted = compress(data, model, **options, adapt=adapt, progress=progress)
    return (adapted, True) if len(adapted) < len(plain) else (plain, False)


# ---- decompress ---------------------------------------------------------------------

def check_compatible(header: Container, model: "ByteModel | IntegerFlatModel", fingerprint: bytes | None = None) -> None:
    """Refuse a stream this model (as loaded) cannot decode, before doing any work.
    (``container.unpack`` has already checked the stream against the format and its length.)
    An integer stream is checked against the integer model's fingerprint and decodes anywhere."""
    settings = header.settings
    if settings.precision != PRECISION:
        raise OmnibyteError(f"unsupported coding precision {settings.precision} bits (this build codes with {PRECISION})")
    if settings.integer:
        fingerprint = model.fingerprint()
    fingerprint = fingerprint or model_fingerprint(model)
    if header.fingerprint != fingerprint[: container.FINGERPRINT_BYTES]:
        made_with = (f"the built-in model {header.builtin!r} of another omnibyte build or install"
                     if header.builtin else
                     "a model built from scratch whose initial weights differ here (another omnibyte or "
                     "torch version initialises it differently)" if header.fresh else "a different model")
        raise OmnibyteError(f"wrong model: the stream was compressed with {made_with} "
                            f"(stream fingerprint {header.fingerprint.hex()[:12]}, model {fingerprint.hex()[:12]})")
    check_device(header, model.device.type)
    if settings.chunk_size > model.max_seq_len:
        raise OmnibyteError(f"corrupted stream (header field chunk_size = {settings.chunk_size:,} exceeds the "
                            f"model's context of {model.max_seq_len:,} bytes)")


def check_device(header: Container, device_type: str) -> None:
    """A float stream decodes only on the device type it was made on (its arithmetic is that
    device's); an integer stream on any."""
    settings = header.settings
    if not settings.integer and device_type != settings.device:
        raise OmnibyteError(f"the stream was made on {settings.device} ({settings.dtype}) and decodes only "
                            f"there; the model is on {device_type} (streams made with --numerics integer "
                            f"decode on any device)")


def check_groups(header: Container, plan: Plan, raw: np.ndarray) -> None:
    """Every group's stream against what it has to code: empty exactly when all its chunks are
    raw, and no more coded bytes than a stream of its length can hold."""
    for index, (group, stream) in enumerate(zip(plan.groups(header.settings.batch_size), header.streams)):
        coded = int(plan.lengths[group][~raw[group]].sum())
        if coded and not stream:
            raise OmnibyteError(f"corrupted stream (group {index} has {coded:,} coded bytes but an empty stream)")
        if stream and not coded:
            raise OmnibyteError(f"corrupted stream (group {index} stores every chunk raw but has a coded stream)")
        if coded > container.coded_capacity(len(stream)):
            raise OmnibyteError(f"corrupted stream (group {index} claims {coded:,} coded bytes; its "
                                f"{len(stream):,}-byte stream holds at most {container.coded_capacity(len(stream)):,})")


@torch.inference_mode()
def decompress_members(
    blob: bytes,
    model: ByteModel | None = None,
    progress: Progress | None = None,
    fingerprint: bytes | None = None,
    device: str | torch.device | None = None,
) -> list[bytes]:
    """Inverse of ``compress_members``; checks the stream, the model, the settings and the
    end-to-end digest. An integer stream takes the float model (quantized here) or the
    ``IntegerFlatModel`` made from it. Any failure is one ``OmnibyteError``; wrong data is never returned.
    A stream made from scratch rebuilds its model from the container (``model`` is not used;
    ``device`` defaults to the stream's own); a stream made with the built-in model loads it
    when no ``model`` is given; any other stream needs its ``model``."""
    header = container.unpack(blob)
    if header.fresh is not None:
        model = scratch_for(header, device)
        fingerprint = None
    elif model is None and header.builtin is not None:
        model, fingerprint = builtin_for(header, device), None
    elif model is None:
        raise OmnibyteError("this stream was compressed with a trained model: give that model")
    if header.settings.integer and not isinstance(model, IntegerFlatModel):
        model = integer_model(model)  # built where the given model lives: any device decodes it
    elif not header.settings.integer and isinstance(model, IntegerFlatModel):
        raise OmnibyteError("this stream was made with float numerics: give the float model, not an integer one")
    check_compatible(header, model, fingerprint)
    settings = header.settings
    rows = settings.batch_size
    plan = plan_chunks(header.member_sizes, settings.chunk_size)
    raw = header.raw_flags()
    check_groups(header, plan, raw)
    out = np.zeros(header.original_size, dtype=np.uint8)
    raw_data = np.frombuffer(header.raw_data, dtype=np.uint8)
    raw_starts = np.cumsum(plan.lengths * raw) - plan.lengths * raw  # in raw_data
    for chunk in np.flatnonzero(raw):
        start, length, source = int(plan.starts[chunk]), int(plan.lengths[chunk]), int(raw_starts[chunk])
        out[start : start + length] = raw_data[source : source + length]
    # version 2 stepped a decoder of chunk_size tokens; version 3 one of the longest chunk's
    max_len = settings.chunk_size if header.version == 2 else plan.longest
    groups = plan.groups(rows)
    mixing = header.mix is not None
    with _stepping(model, settings, max_len, header.adapt, header.mix, header.original_size) as stepper:
        for index, (group, stream) in enumerate(zip(groups, header.streams)):
            lengths = _padded(plan.lengths[group], rows)
            coded_rows = np.flatnonzero(~_padded(raw[group], rows, True) & (lengths > 0))
            is_raw = _padded(raw[group], rows, False)
            adapting = stepper.adapter is not None
            if not len(coded_rows) and not mixing:  # all raw: no model needed (but an adapting one learns)
                if adapting:
                    matrix = _group_matrix(out, plan, group, rows, int(lengths[0]), which=is_raw)
                    _GroupUpdates(stepper.adapter, matrix, lengths, index == len(groups) - 1).finish()
                if progress is not None:
                    progress(int(lengths.sum()), None)
                continue
            coded_lengths = lengths[coded_rows]  # descending, like the rows
            # the raw rows' later steps are not needed, unless mixing: its counts and weights
            # learn from every step the encoder made, which steps to the longest row
            steps = int(lengths[0]) if mixing or not len(coded_rows) else int(coded_lengths[0])
            # adapting, the updates need every row's bytes up to the group's longest row
            matrix = _group_matrix(out, plan, group, rows, int(lengths[0]) if adapting else steps, which=is_raw)
            device_rows = torch.from_numpy(coded_rows).to(stepper.device)
            decoder = _GroupDecoder(stream, index)

            def decode_step(t: int, active: int, weights: torch.Tensor) -> torch.Tensor:
                coding = int(np.searchsorted(-coded_lengths, -t, side="left"))  # coded rows with length > t
                if coding:  # mixing steps on past the coded rows (their bytes are all known)
                    frequencies = weights[device_rows[:coding]].cpu().numpy()
                    matrix[t, coded_rows[:coding]] = decoder.decode(frequencies)
                return torch.from_numpy(matrix[t].astype(np.int64)).to(stepper.device)

            updates = _GroupUpdates(stepper.adapter, matrix, lengths, index == len(groups) - 1)
            done = _run_group(stepper, lengths, steps, decode_step, progress, lambda: None,
                              updates if adapting else None)
            decoder.finish()
            updates.finish()
            for row in coded_rows:
                chunk = group[row]
                start, length = int(plan.starts[chunk]), int(plan.lengths[chunk])
                out[start : start + length] = matrix[:length, row]
            if progress is not None and int(lengths.sum()) > done:
                progress(int(lengths.sum()) - done, None)
    ends = np.cumsum(header.member_sizes, dtype=np.int64) if header.member_sizes else np.zeros(0, np.int64)
    members = [out[end - size : end].tobytes() for size, end in zip(header.member_sizes, ends)]
    if container.digest(members) != header.original_digest:
        if settings.integer:
            raise OmnibyteError("decoded data fails its checksum: the stream is corrupted (integer numerics are "
                                "the same on every device); nothing was written")
        raise OmnibyteError(
            f"decoded data fails its checksum: the stream is corrupted, or it was made on another kind of "
            f"{settings.device} or software version ({settings.device}/{settings.dtype}) whose arithmetic "
            f"differs; nothing was written")
    return members


def scratch_for(header: Container, device: str | torch.device | None = None) -> ByteModel:
    """The from-scratch model a stream records, rebuilt on ``device`` (default: the stream's own
    device type), after the checks that need no model."""
    device = torch.device(device or header.settings.device)
    if device.type != header.settings.device:
        raise OmnibyteError(f"the stream was made on {header.settings.device} ({header.settings.dtype}) and "
                            f"decodes only there, not on {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OmnibyteError(f"the stream was made on cuda ({header.settings.dtype}) and decodes only there; "
                            f"this machine has no CUDA GPU")
    return build_scratch(header.fresh, device)


def check_builtin_name(header: Container) -> None:
    """Refuse a stream made with a built-in model this build does not ship."""
    if header.builtin is not None and header.builtin != BUILTIN_NAME:
        raise OmnibyteError(f"the stream was made with the built-in model {header.builtin!r}, which this "
                            f"build does not have (it has {BUILTIN_NAME!r}): decompress it with the omnibyte "
                            f"that made it, or name the model with --model")


def builtin_for(header: Container, device: str | torch.device | None = None) -> ByteModel:
    """The built-in model a stream names, on ``device`` (default: the stream's own device type)."""
    check_builtin_name(header)
    device = torch.device(device or header.settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OmnibyteError(f"the stream was made on cuda ({header.settings.dtype}) and decodes only there; "
                            f"this machine has no CUDA GPU")
    return load_builtin_model(device)


def decompress(blob: bytes, model: ByteModel | None = None, **options) -> bytes:
    """Inverse of ``compress``."""
    members = decompress_members(blob, model, **options)
    if len(members) != 1:
        raise OmnibyteError(f"the stream holds {len(members)} members; use decompress_members")
    return members[0]
