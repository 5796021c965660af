"""CUDA-graph capture of decoder steps, written once for every family.

A decoder keeps all of its state in preallocated device tensors, so each of its steps (its
"pieces") is a fixed sequence of kernels over fixed addresses. ``GraphSteps`` captures each
piece once and replays it; on CPU, with ``graph=False``, or when a capture fails (a warning
says why and ``error`` keeps it) the very same pieces run eagerly. Capturing wraps the block
code the eager path runs; it never rewrites it.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable

import torch


class GraphCaptureWarning(RuntimeWarning):
    """CUDA graph capture failed; the decoder runs its steps eagerly."""


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


class GraphSteps:
    """Named static pieces of a decoder, replayed as CUDA graphs when ``graph`` is on."""

    def __init__(self, pieces: dict[Any, Callable[[], Any]], graph: bool):
        self.pieces = pieces
        self.graphs: dict[Any, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[Any, Any] = {}
        self.use_graph = graph
        self.error: str | None = None

    @torch.no_grad()
    def capture(self, prepare: Callable[[], None]) -> None:
        """Capture every piece (``prepare`` rewinds the decoder before each warm-up and capture)."""
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
    def run(self, name) -> Any:
        """Run piece ``name``; a tensor output is cloned from a graph (replays overwrite it)."""
        graph = self.graphs.get(name)
        if graph is None:
            return self.pieces[name]()
        graph.replay()
        output = self.outputs[name]
        return output.clone() if isinstance(output, torch.Tensor) else None
