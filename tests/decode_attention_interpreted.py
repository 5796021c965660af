"""decode_attention's Triton kernels run by Triton's interpreter on CPU tensors: against masked
softmax attention in float32, and inside the flat decoder against the same decoder on SDPA.

Triton's interpreter must be on before Triton is first imported (its own library functions are
built for it then), and with it on every cached CPU call could take the kernel, so these checks
run in a process of their own: tests/test_decode_attention.py starts it with TRITON_INTERPRET=1.
Sizes are tiny: the interpreter runs every program in Python."""
import os

import pytest
import torch

from omnibyte.models import build_model, decode_attention
from helpers import random_tokens

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or not decode_attention.triton_available(),
    reason="needs Triton with TRITON_INTERPRET=1 from the start (test_decode_attention.py runs this file so)")

# float32: the kernel accumulates in float32 like the reference, only the order of the sums
# differs; float16: the probabilities are rounded to float16 before they weight the values
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3}


def ragged_inputs(tokens: int, heads: int, kv_heads: int, dtype: torch.dtype, slots: int = 70, head_dim: int = 16):
    """Three rows: one whose first token is at slot 0 (it sees one key), one in the middle,
    one whose last token takes the last slot; T tokens per row at consecutive positions."""
    generator = torch.Generator().manual_seed(tokens * 100 + heads * 10 + kv_heads)
    q = torch.randn(3, tokens, heads, head_dim, generator=generator).to(dtype)
    keys = torch.randn(3, kv_heads, slots, head_dim, generator=generator).to(dtype)
    values = torch.randn(3, kv_heads, slots, head_dim, generator=generator).to(dtype)
    starts = torch.tensor([0, 21, slots - tokens])
    positions = starts[:, None] + torch.arange(tokens)
    return q, keys, values, positions


def assert_matches_reference(q, keys, values, positions, **options):
    out = decode_attention.decode_attention(q, keys, values, positions, **options)
    expected = decode_attention.decode_attention_reference(q, keys, values, positions)
    assert out.shape == (q.shape[0], q.shape[2], q.shape[1], q.shape[3]) and out.dtype == q.dtype
    tolerance = TOLERANCES[q.dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens", [1, 9])
@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4)])  # grouped-query, multi-head
def test_kernel_matches_masked_attention(heads, kv_heads, tokens, dtype):
    assert_matches_reference(*ragged_inputs(tokens, heads, kv_heads, dtype))


@pytest.mark.parametrize("splits", [1, 3, 8])  # 8 splits of 70 slots: blocks of 64 leave most splits empty
def test_every_split_count_gives_the_same_attention(splits):
    assert_matches_reference(*ragged_inputs(2, 8, 2, torch.float32, slots=150), splits=splits)


def test_kernel_reads_strided_views_and_scale():
    """A cache layer's visible slots are a view of a larger buffer; queries a slice of the
    fused projection; positions past the visible slots mean all of them."""
    q, keys, values, positions = ragged_inputs(1, 8, 2, torch.float32, slots=80)
    wide_q = torch.cat((q, torch.randn_like(q)), dim=2)[:, :, :8]
    cache_keys, cache_values = keys[:, :, :70], values[:, :, :70]
    positions = positions.clamp_max(69).t().contiguous().t()  # column-major [B, 1]
    positions[2] = 500
    out = decode_attention.decode_attention(wide_q, cache_keys, cache_values, positions, scale=0.3)
    expected = decode_attention.decode_attention_reference(wide_q, cache_keys, cache_values,
                                                           positions.clamp_max(69), scale=0.3)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def decode_ragged(model, tokens: torch.Tensor) -> torch.Tensor:
    """Prefill of ragged lengths (at most 16 tokens, so it takes the kernel too), steps, a
    reset row that starts over: logits of every call, stacked."""
    decoder = model.decoder(3, 32, fast=True)
    logits = [decoder.prefill(tokens[:, :9], [9, 4, 1])]
    for t in range(9, 14):
        logits.append(decoder.step(tokens[:, t]))
    decoder.reset([1])
    for t in range(14, 18):
        logits.append(decoder.step(tokens[:, t]))
    return torch.stack(logits, 1)


def test_fast_decoder_gives_the_same_logits_on_the_kernel_as_on_sdpa(monkeypatch):
    torch.manual_seed(0)
    model = build_model("flat", "tiny").eval()  # 4 query heads of 16, 2 kv heads
    tokens = random_tokens(3, 18, seed=5)
    calls = []
    kernel = decode_attention.decode_attention
    monkeypatch.setattr(decode_attention, "decode_attention", lambda *args: calls.append(1) or kernel(*args))
    with torch.no_grad():
        monkeypatch.setattr(decode_attention, "_backend", "sdpa")  # restored after the test
        on_sdpa = decode_ragged(model, tokens)
        assert not calls
        decode_attention.set_backend("triton")
        on_kernel = decode_ragged(model, tokens)
    assert len(calls) == 10 * model.config.num_layers  # the prefill and every step, in every layer
    torch.testing.assert_close(on_kernel, on_sdpa, atol=1e-5, rtol=1e-5)


def test_compiled_graph_keeps_the_kernel_as_one_op():
    """torch.compile traces the op through its fake implementation, without entering Triton."""
    q, keys, values, positions = ragged_inputs(1, 8, 2, torch.float32)
    graphs = []

    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    compiled = torch.compile(lambda *inputs: decode_attention.decode_attention(*inputs) * 2, backend=backend,
                             fullgraph=True)
    torch.testing.assert_close(compiled(q, keys, values, positions),
                               2 * decode_attention.decode_attention_reference(q, keys, values, positions),
                               atol=1e-5, rtol=1e-5)
    targets = [str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert targets == ["omnibyte.decode_attention", "<built-in function mul>"]
