"""The Mamba block: chunked scan against the sequential reference, cached decoding, training."""
import pytest
import torch
import torch.nn.functional as F

from omnibyte.models.mamba import (
    MambaCache,
    MambaStack,
    selective_scan,
    selective_scan_reference,
    selective_state_update,
)

INNER, STATE = 6, 4


def scan_inputs(batch: int, length: int, seed: int = 0, dtype=torch.float64) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    return dict(
        u=randn(batch, length, INNER),
        delta=randn(batch, length, INNER),
        A=-torch.rand(INNER, STATE, generator=generator, dtype=dtype) * 4 - 0.1,
        B=randn(batch, length, STATE),
        C=randn(batch, length, STATE),
        D=randn(INNER),
        z=randn(batch, length, INNER),
        delta_bias=randn(INNER),
        initial_state=randn(batch, INNER, STATE),
    )


@pytest.mark.parametrize("length", [1, 5, 8, 37, 64])
@pytest.mark.parametrize("chunk_size, block_size", [(8, None), (8, 16), (3, 9), (64, None), (None, None), (None, 20)])
def test_chunked_scan_matches_reference(length, chunk_size, block_size):
    inputs = scan_inputs(2, length, seed=length)
    expected, expected_state = selective_scan_reference(
        **inputs, delta_softplus=True, return_final_state=True
    )
    got, state = selective_scan(
        **inputs, delta_softplus=True, return_final_state=True,
        chunk_size=chunk_size, block_size=block_size,
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, expected_state, rtol=1e-10, atol=1e-10)


def test_default_blocks_split_long_sequences(monkeypatch):
    import omnibyte.models.mamba as mamba

    monkeypatch.setattr(mamba, "BLOCK_ELEMENTS", 2 * INNER * STATE * 5)  # 5 steps per block
    inputs = {k: v.requires_grad_() for k, v in scan_inputs(2, 23).items()}
    expected = selective_scan_reference(**inputs, delta_softplus=True)
    expected_grad = torch.autograd.grad(expected.sum(), inputs["delta"])[0]
    got = selective_scan(**inputs, delta_softplus=True)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), inputs["delta"])[0], expected_grad)


def test_scan_options_off_and_zero_state():
    inputs = scan_inputs(1, 11)
    for name in ("D", "z", "delta_bias", "initial_state"):
        inputs[name] = None
    delta = inputs.pop("delta").abs()
    expected = selective_scan_reference(delta=delta, **inputs)
    torch.testing.assert_close(selective_scan(delta=delta, chunk_size=4, **inputs), expected)


def test_reference_is_the_recurrence():
    """The ground truth itself, against the formula written out for two steps."""
    inputs = scan_inputs(1, 2)
    u, A, B, C, h0 = (inputs[k] for k in ("u", "A", "B", "C", "initial_state"))
    dt = F.softplus(inputs["delta"] + inputs["delta_bias"])
    h1 = torch.exp(dt[:, 0, :, None] * A) * h0 + (dt[:, 0] * u[:, 0])[..., None] * B[:, 0, None]
    h2 = torch.exp(dt[:, 1, :, None] * A) * h1 + (dt[:, 1] * u[:, 1])[..., None] * B[:, 1, None]
    y = torch.stack([(h1 * C[:, 0, None]).sum(-1), (h2 * C[:, 1, None]).sum(-1)], dim=1)
    y = (y + inputs["D"] * u) * F.silu(inputs["z"])
    got, state = selective_scan_reference(**inputs, delta_softplus=True, return_final_state=True)
    torch.testing.assert_close(got, y)
    torch.testing.assert_close(state, h2)


def test_chunked_scan_is_stable_with_strong_decay():
    """Steps with dt * A far below -88 (exp underflows in float32) must not give inf/nan."""
    inputs = scan_inputs(1, 50, dtype=torch.float32)
    inputs["delta"] = inputs["delta"] * 0 + 60.0  # softplus(60 + bias) ~ 60, A down to -4
    expected = selective_scan_reference(**inputs, delta_softplus=True)
    got = selective_scan(**inputs, delta_softplus=True, chunk_size=16)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_state_update_equals_scan_steps():
    inputs = scan_inputs(2, 4)
    expected, expected_state = selective_scan_reference(
        **inputs, delta_softplus=True, return_final_state=True
    )
    state = inputs["initial_state"].clone()
    steps = [
        selective_state_update(
            state, inputs["u"][:, t], inputs["delta"][:, t], inputs["A"], inputs["B"][:, t],
            inputs["C"][:, t], inputs["D"], inputs["z"][:, t], inputs["delta_bias"], True,
        )
        for t in range(4)
    ]
    torch.testing.assert_close(torch.stack(steps, 1), expected)
    torch.testing.assert_close(state, expected_state)


@pytest.mark.parametrize("length, chunk_size, block_size", [(13, 4, None), (13, 4, 8), (5, 8, None)])
def test_chunked_scan_gradients_match_reference(length, chunk_size, block_size):
    def grads(scan, **options):
        inputs = {k: v.clone().requires_grad_() for k, v in scan_inputs(2, length, seed=3).items()}
        y, state = scan(**inputs, delta_softplus=True, return_final_state=True, **options)
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        ((y * weights).sum() + (state**2).sum()).backward()
        return {k: v.grad for k, v in inputs.items()}

    expected = grads(selective_scan_reference)
    got = grads(selective_scan, chunk_size=chunk_size, block_size=block_size)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-9, msg=name)


def tiny_stack(seed: int = 0, **overrides) -> MambaStack:
    torch.manual_seed(seed)
    options = dict(hidden_size=16, num_layers=2, state_size=4, conv_size=4, expand=2)
    return MambaStack(**{**options, **overrides}).double().eval()


def hidden_states(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_init_follows_reference():
    mixer = tiny_stack().layers[0].mixer
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 - 1e-9 and dt.max() <= 0.1 + 1e-9
    torch.testing.assert_close(mixer.A[0], -torch.arange(1.0, 5.0, dtype=torch.float64))
    assert torch.all(mixer.D == 1) and mixer.dt_rank == 1 and mixer.inner_size == 32
    # A_log and D are 1-D, so the trainer does not weight-decay them
    assert mixer.A_log.dim() == 1 and mixer.D.dim() == 1


@pytest.mark.parametrize("conv_size", [4, 1])
def test_cached_steps_and_pieces_equal_full_forward(conv_size):
    stack = tiny_stack(conv_size=conv_size)
    x = hidden_states(2, 21)
    with torch.no_grad():
        full = stack(x)
        cache = stack.new_cache(2, max_len=3)  # max_len is ignored by a recurrent state
        steps = torch.cat([stack(x[:, t : t + 1], cache) for t in range(21)], dim=1)
        cache.reset()
        assert not cache.conv_states.any() and not cache.ssm_states.any()
        pieces = torch.cat([stack(x[:, :7], cache), stack(x[:, 7:8], cache), stack(x[:, 8:], cache)], 1)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pieces, full, rtol=1e-10, atol=1e-10)


def test_cache_reset_gives_the_fresh_result():
    stack = tiny_stack()
    x, other = hidden_states(1, 9), hidden_states(1, 9, seed=5)
    with torch.no_grad():
        cache = stack.new_cache(1)
        fresh = stack(x, cache)
        stack(other, cache)
        continued = stack(x, cache)
        cache.reset()
        again = stack(x, cache)
    assert not torch.allclose(continued, fresh)  # the state really carries over
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
    assert isinstance(cache, MambaCache) and cache.nbytes() == 2 * 32 * (3 + 4) * 8


def test_no_future_leakage():
    stack = tiny_stack()
    x = hidden_states(1, 30)
    changed = x.clone()
    changed[:, 17] += 1.0
    with torch.no_grad():
        before, after = stack(x), stack(changed)
    torch.testing.assert_close(after[:, :17], before[:, :17], rtol=0, atol=1e-12)
    assert (after[:, 17:] - before[:, 17:]).abs().amax(dim=-1).min() > 1e-6


def test_gradient_checkpointing_gives_same_gradients():
    def grads(checkpointing: bool):
        stack = tiny_stack().train()
        stack.gradient_checkpointing = checkpointing
        stack(hidden_states(2, 10)).square().sum().backward()
        return [p.grad for p in stack.parameters()]

    for got, expected in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, expected)


def test_bf16_autocast_matches_float32():
    """Under autocast the projections run in bf16 while the scan stays in float32."""
    stack = tiny_stack().float()
    x = hidden_states(2, 12).float()
    with torch.no_grad():
        expected = stack(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full = stack(x)
            cache = stack.new_cache(2, dtype=torch.bfloat16)
            assert cache.ssm_states.dtype == torch.float32
            steps = torch.cat([stack(x[:, t : t + 1], cache) for t in range(12)], dim=1)
    torch.testing.assert_close(full.float(), expected, rtol=0.05, atol=0.05)
    torch.testing.assert_close(steps.float(), expected, rtol=0.05, atol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stack.train()(x.requires_grad_()).float().square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_fused_kernel_wiring(monkeypatch):
    """The mamba_ssm / causal_conv1d calls, with stand-ins of their documented layouts
    (u, delta, z: [b, d, l]; B, C: [b, n, l]; conv weight [d, w]), give the pure result."""
    import omnibyte.models.mamba as mamba

    calls = []

    def fake_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        calls.append("scan")
        t = lambda x: x.transpose(1, 2)  # noqa: E731
        return t(selective_scan_reference(t(u), t(delta), A, t(B), t(C), D, t(z), delta_bias, delta_softplus))

    def fake_conv(x, weight, bias=None, activation=None):
        calls.append("conv")
        out = F.conv1d(F.pad(x, (weight.shape[1] - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
        return F.silu(out) if activation == "silu" else out

    stack = tiny_stack()
    x = hidden_states(2, 9)
    with torch.no_grad():
        expected = stack(x)
        monkeypatch.setattr(mamba, "_cuda_selective_scan", fake_scan)
        monkeypatch.setattr(mamba, "_cuda_causal_conv1d", fake_conv)
        monkeypatch.setattr(mamba, "_use_kernels", lambda tensor: True)
        got = stack(x)
        assert calls == ["conv", "scan"] * 2
        stack(x, stack.new_cache(2))  # a cache continues a state: the pure path
        assert len(calls) == 4
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_parameter_count_and_flops():
    stack = tiny_stack()
    inner, rank = 32, 1
    per_layer = (16 * 2 * inner + inner * 4 + inner + inner * (rank + 8) + rank * inner + inner
                 + inner * 4 + inner + inner * 16 + 16)
    assert stack.num_parameters() == 2 * per_layer + 16
    assert stack.flops_per_token() > 6 * stack.num_parameters()
    assert stack.flops_per_token(4096) == stack.flops_per_token(16)


def test_tiny_stack_learns_long_range_recall():
    """Say whether token 0 has appeared so far: beyond the conv's 4-step window, so the
    SSM state has to carry it."""
    torch.manual_seed(0)
    vocab, width = 8, 32
    embed = torch.nn.Embedding(vocab, width)
    stack = MambaStack(width, num_layers=1, state_size=8)
    head = torch.nn.Linear(width, 2)
    params = [*embed.parameters(), *stack.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        tokens = torch.randint(0, vocab, (16, 32), generator=generator)
        seen = (tokens == 0).cummax(dim=1).values.long()
        loss = F.cross_entropy(head(stack(embed(tokens))).reshape(-1, 2), seen.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.5
    assert sum(losses[-5:]) / 5 < 0.1
