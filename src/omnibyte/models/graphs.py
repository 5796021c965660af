"""CUDA-graph capture of decoder steps, written once for every family.

A decoder keeps all of its state in preallocated device tensors, so each of its steps (its
"pieces") is a fixed sequence of kernels over fixed addresses. ``GraphSteps`` captures each
piece once and replays it; on CPU, with ``graph=False``, or when a capture fails (a warning
says why and ``error`` keeps it) the very same pieces run eagerly. Capturing wraps the block
code the eager path runs; it never rewrites it.

With ``compile`` each piece first goes through ``torch.compile``, which fuses
the small element-wise kernels a decoding step is made of (norms, RoPE, residual adds, casts),
and the graph then captures the compiled piece. Compiling costs tens of seconds once per
decoder; a piece that fails to compile (no C++ compiler or Triton, an unsupported op) warns
and runs as written.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable

import torch


class GraphCaptureWarning(RuntimeWarning):
    """CUDA graph capture failed; the decoder runs its steps eagerly."""


class StepCompileWarning(RuntimeWarning):
    """torch.compile failed on a decoder piece; that piece runs uncompiled."""


def _graph_autocast():
    """Inside autocast, capture with its weight-cast cache off (as ``make_graphed_callables``
    requires): cached casts would be freed when the caller's autocast region ends while the graph
    still reads them, so the graph does its own casts."""
    if torch.is_autocast_enabled("cuda"):
        return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
    return contextlib.nullcontext()


@torch.no_grad()
def capture_graph(
    step: Callable[[], Any], prepare: Callable[[], None] | None = None, warmup: int = 3
) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Warm ``step`` up on a side stream, then capture one call of it: (graph, its output).

    ``prepare`` runs before every warm-up call and before the capture (warm-ups really execute
    and advance the decoder's positions). ``step`` must only read and write tensors that outlive
    the graph, by their addresses."""
    with _graph_autocast():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # cuBLAS handles, lazy init, compilation
            for _ in range(warmup):
                if prepare is not None:
                    prepare()
                step()
        torch.cuda.current_stream().wait_stream(side)
        if prepare is not None:
            prepare()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = step()
        torch.cuda.current_stream().synchronize()
    return graph, output


def decoding_mode(device: torch.device, fast: bool, graph: bool | None, compile: bool) -> bool:
    """Whether a decoder captures CUDA graphs (``graph`` None: where ``fast`` and on CUDA);
    ValueError for combinations that cannot run."""
    use_graph = fast and device.type == "cuda" if graph is None else graph
    if use_graph and device.type != "cuda":
        raise ValueError("CUDA graphs need the model on a CUDA device")
    if compile and not fast:
        raise ValueError("compile needs fast=True: only a fast decoder's steps keep one shape")
    return use_graph


def cache_slots(capacity: int, fast: bool, compile: bool, alignment: int) -> int:
    """Positions a decoder's cache holds for ``capacity`` tokens: exactly those for eager steps;
    a multiple of ``alignment`` for fast ones (aligned masks for attention kernels); with
    ``compile``, ``alignment`` times a power of two, because a compiled step is specialised to
    its cache's shape and so decoders of any capacity share a handful of compiled shapes."""
    if not fast:
        return capacity
    units = -(-capacity // alignment)
    if compile:
        units = 1 << (units - 1).bit_length()
    return units * alignment


class GraphSteps:
    """Named static pieces of a decoder, compiled when ``compile`` is on and replayed as CUDA
    graphs when ``graph`` is on."""

    def __init__(self, pieces: dict[Any, Callable[[], Any]], graph: bool, compile: bool = False):
        self.pieces = dict(pieces)
        self.graphs: dict[Any, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[Any, Any] = {}
        self.use_graph = graph
        self.compile = compile
        self.error: str | None = None
        self.compile_errors: dict[Any, str] = {}

    @torch.no_grad()
    def capture(self, prepare: Callable[[], None]) -> None:
        """Compile (with ``compile``) and capture (with ``graph``) every piece; ``prepare``
        rewinds the decoder before each warm-up, compilation and capture call."""
        if self.compile:
            self._compile_pieces(prepare, list(self.pieces))
        if not self.use_graph:
            return
        try:
            for name, piece in self.pieces.items():
                self.graphs[name], self.outputs[name] = capture_graph(piece, prepare=prepare)
        except Exception as error:  # noqa: BLE001 - any capture failure: decode eagerly instead
            self.graphs, self.outputs, self.use_graph = {}, {}, False
            self.error = f"{type(error).__name__}: {error}"
            warnings.warn(f"CUDA graph capture failed, decoding eagerly ({self.error})",
                          GraphCaptureWarning, stacklevel=3)

    @torch.no_grad()
    def add(self, name: Any, piece: Callable[[], Any], prepare: Callable[[], None]) -> None:
        """Add a piece to a decoder that is already decoding (one only some runs need, such as
        speculative decoding's verify call): compiled and captured like the others, ``prepare``
        restoring the decoder's state before each warm-up and the capture. If its capture fails,
        this piece alone runs eagerly (a warning says why)."""
        self.pieces[name] = piece
        if self.compile:
            self._compile_pieces(prepare, [name])
        if self.use_graph:
            try:
                self.graphs[name], self.outputs[name] = capture_graph(self.pieces[name], prepare=prepare)
            except Exception as error:  # noqa: BLE001 - any capture failure: run this piece eagerly
                self.error = f"{type(error).__name__}: {error}"
                warnings.warn(f"CUDA graph capture of decoder piece {name!r} failed, running it eagerly "
                              f"({self.error})", GraphCaptureWarning, stacklevel=3)
        prepare()  # compiling and warming up ran the piece: leave the decoder as it was

    def _compile_pieces(self, prepare: Callable[[], None], names: list[Any]) -> None:
        """Replace the named pieces by their compiled forms, each compiled here by one call after
        ``prepare`` (so a failure can fall back before the decoder holds any state)."""
        for name in names:
            piece = self.pieces[name]
            # static shapes: a step compiled for dynamic cache lengths ran ~100x slower on the
            # CPU, and ``cache_slots`` keeps the number of distinct shapes small
            compiled = torch.compile(piece, dynamic=False)
            try:
                with _graph_autocast():  # compile under the autocast state the capture will use
                    prepare()
                    compiled()
            except Exception as error:  # noqa: BLE001 - any compile failure: run the piece as written
                self.compile_errors[name] = f"{type(error).__name__}: {error}".splitlines()[0]
                warnings.warn(f"torch.compile failed on decoder piece {name!r}, running it uncompiled "
                              f"({self.compile_errors[name]})", StepCompileWarning, stacklevel=4)
                continue
            self.pieces[name] = compiled

    @torch.no_grad()
    def run(self, name) -> Any:
        """Run piece ``name``; a tensor output is cloned from a graph (replays overwrite it)."""
        graph = self.graphs.get(name)
        if graph is None:
            return self.pieces[name]()
        graph.replay()
        output = self.outputs[name]
        return output.clone() if isinstance(output, torch.Tensor) else None
