"""Mamba (selective state space) blocks in pure PyTorch.

``selective_scan_reference`` is the naive loop over time (the ground truth);
``selective_scan`` is the chunked parallel scan used for training; ``MambaStack`` is a
pre-norm residual stack of Mamba-1 mixers with a recurrent ``MambaCache`` for decoding.
When ``mamba_ssm`` (and ``causal_conv1d``) import and the tensors are on CUDA, the
cache-free path uses their fused kernels; set ``OMNIBYTE_MAMBA_KERNELS=0`` to force the
pure-PyTorch path.

Layouts: sequences are [batch, time, channels] throughout (mamba_ssm's kernels take
[batch, channels, time]; the transposes live in ``_kernel_scan``). ``A`` is the negative
state matrix [inner, state]; ``B``/``C`` are [batch, time, state].
"""
from __future__ import annotations

import contextlib
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from omnibyte.models.layers import RMSNorm
from omnibyte.models.validation import check_positive_int

try:  # optional fused CUDA kernels
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _cuda_selective_scan
except Exception:  # ImportError, or a build that does not match this torch
    _cuda_selective_scan = None
try:
    from causal_conv1d import causal_conv1d_fn as _cuda_causal_conv1d
except Exception:
    _cuda_causal_conv1d = None

KERNELS_ENV = "OMNIBYTE_MAMBA_KERNELS"  # "0" forces the pure-PyTorch path
BLOCK_ELEMENTS = 1 << 26  # states [batch, block, inner, state] materialised at once by the scan
SCAN_FLOPS_PER_STATE = 7  # forward: discretise (2), update (3), read out (2) per state element


def kernels_available() -> bool:
    """True when mamba_ssm's selective scan imported (it still needs CUDA tensors)."""
    return _cuda_selective_scan is not None


def _use_kernels(x: torch.Tensor) -> bool:
    return _cuda_selective_scan is not None and x.is_cuda and os.environ.get(KERNELS_ENV, "1") != "0"


# ---------------------------------------------------------------------------------------
# Selective scan: h_t = exp(dt_t * A) h_{t-1} + dt_t B_t x_t,  y_t = C_t . h_t + D x_t
# ---------------------------------------------------------------------------------------
def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 at least (bf16 recurrences drift); float64 stays float64 for exact tests."""
    return torch.promote_types(x.dtype, torch.float32)


def _full_precision(x: torch.Tensor):
    """Switch autocast off (the scan's einsums must stay in float32); free when it is off."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _step_sizes(delta, delta_bias, delta_softplus, dtype) -> torch.Tensor:
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)
    return F.softplus(dt) if delta_softplus else dt


def _finish(y, u, D, z, out_dtype) -> torch.Tensor:
    """Skip connection D * u and SiLU(z) gate, then back to the input dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def _zero_state(u: torch.Tensor, A: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(u.shape[0], u.shape[2], A.shape[1], device=u.device, dtype=dtype)


def _recurrence_step(h, u_t, dt_t, A, B_t, C_t):
    """One time step on [batch, inner(, state)] slices; returns (new state, C . state)."""
    h = torch.exp(dt_t.unsqueeze(-1) * A) * h + (dt_t * u_t).unsqueeze(-1) * B_t.unsqueeze(1)
    return h, torch.einsum("bdn,bn->bd", h, C_t)


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False,
):
    """Sequential loop over time: the ground truth for ``selective_scan``.

    u, delta, z: [batch, time, inner]; A: [inner, state] (negative); B, C: [batch, time, state];
    D, delta_bias: [inner]; initial_state: [batch, inner, state]. Returns y [batch, time, inner]
    (and the final state when ``return_final_state``)."""
    dtype = _compute_dtype(u)
    with _full_precision(u):
        x, dt = u.to(dtype), _step_sizes(delta, delta_bias, delta_softplus, dtype)
        A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
        h = _zero_state(u, A, dtype) if initial_state is None else initial_state.to(dtype)
        outputs = []
        for t in range(u.shape[1]):
            h, y_t = _recurrence_step(h, x[:, t], dt[:, t], A, B[:, t], C[:, t])
            outputs.append(y_t)
        y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(x.shape)
        y = _finish(y, x, D, z, u.dtype)
    return (y, h) if return_final_state else y


def selective_state_update(
    state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
) -> torch.Tensor:
    """One decoding step: u, delta, z [batch, inner]; B, C [batch, state]; advances
    ``state`` [batch, inner, state] in place and returns y [batch, inner]."""
    dtype = state.dtype
    with _full_precision(u):
        x, dt = u.to(dtype), _step_sizes(delta, delta_bias, delta_softplus, dtype)
        h, y = _recurrence_step(state, x, dt, A.to(dtype), B.to(dtype), C.to(dtype))
        state.copy_(h)
        return _finish(y, x, D, z, u.dtype)


def _pad_time(x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def _scan_block(x, dt, A, B, C, h0, chunk_size: int):
    """Scan one block of time steps from state ``h0``: returns (C . h per step, final h).

    The block is cut into chunks of ``chunk_size``: (1) every chunk is scanned from a zero
    state, all chunks in parallel (a loop over positions inside a chunk); (2) the state
    entering each chunk is carried across chunks (a loop over chunks on [batch, inner, state]);
    (3) each local state gets the carried state times its decay since the chunk start,
    exp(cumsum of log-decays) <= 1 because A < 0, so nothing can overflow. Mamba-1 decays
    differ per (channel, state), so an L x L segment-sum form would need [L, L, inner, state]
    per chunk; these two short loops touch each state element O(1) times instead."""
    batch, length, inner = x.shape
    state = A.shape[1]
    chunk = min(chunk_size, length)
    pad = -length % chunk
    # padded steps have dt = 0: decay 1 and no input, so they leave the state unchanged
    x, dt, B, C = (_pad_time(t, pad) for t in (x, dt, B, C))
    chunks = (length + pad) // chunk
    shape = (batch, chunks, chunk, inner, state)
    log_decay = (dt.unsqueeze(-1) * A).view(shape)
    inputs = ((dt * x).unsqueeze(-1) * B.unsqueeze(2)).view(shape)

    # unbind, not indexing in the loops: a select's backward writes a full-size zero tensor
    inputs, decay = inputs.unbind(dim=2), log_decay.exp().unbind(dim=2)
    local = [inputs[0]]
    for position in range(1, chunk):
        local.append(torch.addcmul(inputs[position], decay[position], local[-1]))
    chunk_ends = local[-1].unbind(dim=1)
    local = torch.stack(local, dim=2)
    del inputs, decay  # lowers the peak of the block's [batch, time, inner, state] temporaries

    decay_since_start = log_decay.cumsum(dim=2).exp()
    entering, carry = [], h0
    for end, chunk_decay in zip(chunk_ends, decay_since_start[:, :, -1].unbind(dim=1)):
        entering.append(carry)
        carry = torch.addcmul(end, chunk_decay, carry)
    entering = torch.stack(entering, dim=1).unsqueeze(2)

    states = torch.addcmul(local, decay_since_start, entering)
    y = torch.einsum("bcldn,bcln->bcld", states, C.view(batch, chunks, chunk, state))
    return y.reshape(batch, chunks * chunk, inner)[:, :length], carry


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False,
    chunk_size: int | None = None, block_size: int | None = None,
):
    """Chunked parallel selective scan; same arguments and result as the reference.

    Time is processed in blocks of ``block_size`` steps (default: as many as fit
    ``BLOCK_ELEMENTS`` state elements), carrying the state between blocks; each block is cut
    into chunks of ``chunk_size`` (default: about sqrt(block), which keeps both loops of
    ``_scan_block`` short). Under autograd each block is recomputed in backward, so training
    keeps only the [batch, time, inner] inputs and one [batch, inner, state] state per block."""
    dtype = _compute_dtype(u)
    batch, length, inner = u.shape
    if block_size is None:  # equal blocks of at most BLOCK_ELEMENTS states
        fits = max(1, BLOCK_ELEMENTS // max(1, batch * inner * A.shape[1]))
        block_size = -(-length // -(-length // fits)) if length else 1
    block_size = max(1, min(block_size, length))
    chunk_size = chunk_size or 2 ** round(math.log2(math.sqrt(block_size)))
    with _full_precision(u):
        x, dt = u.to(dtype), _step_sizes(delta, delta_bias, delta_softplus, dtype)
        A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
        h = _zero_state(u, A, dtype) if initial_state is None else initial_state.to(dtype)
        recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C, h))
        outputs = []
        for start in range(0, length, block_size):
            block = slice(start, start + block_size)
            args = (x[:, block], dt[:, block], A, B[:, block], C[:, block], h, chunk_size)
            if recompute:
                y, h = checkpoint(_scan_block, *args, use_reentrant=False)
            else:
                y, h = _scan_block(*args)
            outputs.append(y)
        y = torch.cat(outputs, dim=1) if outputs else x.new_zeros(x.shape)
        y = _finish(y, x, D, z, u.dtype)
    return (y, h) if return_final_state else y


def _kernel_scan(u, delta, A, B, C, D, z, delta_bias):
    """mamba_ssm's fused scan on [batch, time, channels] tensors (softplus on delta)."""
    y = _cuda_selective_scan(
        u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
        D.float(), z=z.transpose(1, 2), delta_bias=delta_bias.float(), delta_softplus=True,
    )
    return y.transpose(1, 2)


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------
class MambaCache:
    """Recurrent state of every layer of one ``MambaStack``: the last ``conv_size - 1``
    conv inputs [L, B, inner, conv_size - 1] and the SSM state [L, B, inner, state]
    (float32 at least)."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        inner_size: int,
        conv_size: int,
        state_size: int,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.conv_states = torch.zeros(
            num_layers, batch_size, inner_size, conv_size - 1, device=device, dtype=dtype
        )
        self.ssm_states = torch.zeros(  # at least float32, like the scan
            num_layers, batch_size, inner_size, state_size, device=device,
            dtype=torch.promote_types(dtype, torch.float32),
        )

    @property
    def capacity(self) -> int:
        """A recurrent state has no length limit."""
        return sys.maxsize

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Zero the state of the rows where the bool mask ``rows`` [B] is true (all when None)."""
        if rows is None:
            self.conv_states.zero_()
            self.ssm_states.zero_()
            return
        keep = ~rows.view(1, -1, 1, 1)
        self.conv_states.mul_(keep)
        self.ssm_states.mul_(keep)

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv_states.clone(), self.ssm_states.clone()

    def restore(self, snapshot: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> None:
        """Put back ``snapshot`` in the rows where the bool mask ``rows`` [B] is true."""
        mask = rows.view(1, -1, 1, 1)
        for state, saved in zip((self.conv_states, self.ssm_states), snapshot):
            state.copy_(torch.where(mask, saved, state))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv_states, self.ssm_states))


class MambaMixer(nn.Module):
    """The Mamba-1 mixer: in_proj -> causal depthwise conv -> SiLU -> selective SSM,
    gated by SiLU(z) -> out_proj."""

    def __init__(
        self,
        hidden_size: int,
        state_size: int = 16,
        conv_size: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
    ):
        super().__init__()
        self.inner_size = expand * hidden_size
        self.state_size = state_size
        self.conv_size = conv_size
        self.dt_rank = dt_rank or math.ceil(hidden_size / 16)
        inner = self.inner_size
        self.in_proj = nn.Linear(hidden_size, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, conv_size, groups=inner, bias=True)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        # stored flat so the trainer's weight-decay rule (dim >= 2) and init_weights leave it
        # alone, as the reference implementation exempts A_log from weight decay
        self.A_log = nn.Parameter(torch.empty(inner * state_size))
        self.D = nn.Parameter(torch.empty(inner))
        self.out_proj = nn.Linear(inner, hidden_size, bias=False)

    def reset_parameters(
        self, num_layers: int = 1, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4
    ) -> None:
        """Reference Mamba init: default Linear/Conv init, out_proj scaled by 1/sqrt(layers),
        dt bias so softplus(bias) is log-uniform in [dt_min, dt_max], S4D-real A, D = 1."""
        for module in (self.in_proj, self.conv1d, self.x_proj, self.out_proj):
            module.reset_parameters()
        with torch.no_grad():
            self.out_proj.weight /= math.sqrt(num_layers)
            bound = self.dt_rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -bound, bound)
            log_dt = torch.rand(self.inner_size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = log_dt.exp().clamp(min=dt_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            s4d_real = torch.arange(1, self.state_size + 1, dtype=torch.float32).repeat(self.inner_size)
            self.A_log.copy_(s4d_real.log())
            self.D.fill_(1.0)

    @property
    def A(self) -> torch.Tensor:
        """The negative state matrix [inner, state], float32 at least."""
        return -torch.exp(self.A_log.to(_compute_dtype(self.A_log))).view(self.inner_size, self.state_size)

    def forward(
        self,
        hidden: torch.Tensor,
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, T, D] -> [B, T, D]; with states, continue from them and update them in place."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        fused = ssm_state is None and _use_kernels(hidden)
        u = self._conv(x, conv_state, fused)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # the bias is added (in float32) by the scan
        if fused:
            y = _kernel_scan(u, dt, self.A, B, C, self.D, z, self.dt_proj.bias)
        elif ssm_state is None:
            y = selective_scan(u, dt, self.A, B, C, self.D, z, self.dt_proj.bias, delta_softplus=True)
        elif hidden.shape[1] == 1:  # the decoding step
            y = selective_state_update(
                ssm_state, u[:, 0], dt[:, 0], self.A, B[:, 0], C[:, 0], self.D, z[:, 0],
                self.dt_proj.bias, delta_softplus=True,
            ).unsqueeze(1)
        else:
            y, final = selective_scan(
                u, dt, self.A, B, C, self.D, z, self.dt_proj.bias, delta_softplus=True,
                initial_state=ssm_state, return_final_state=True,
            )
            ssm_state.copy_(final)
        return self.out_proj(y)

    def _conv(self, x: torch.Tensor, conv_state: torch.Tensor | None, fused: bool) -> torch.Tensor:
        """Causal depthwise conv + SiLU over [B, T, inner], preceded by the cached inputs."""
        if fused and _cuda_causal_conv1d is not None:
            out = _cuda_causal_conv1d(
                x.transpose(1, 2).contiguous(), self.conv1d.weight.squeeze(1), self.conv1d.bias,
                activation="silu",
            )
            return out.transpose(1, 2)
        history = self.conv_size - 1
        if conv_state is None:
            padded = F.pad(x, (0, 0, history, 0))
        else:
            padded = torch.cat([conv_state.transpose(1, 2).to(x.dtype), x], dim=1)
            conv_state.copy_(padded[:, padded.shape[1] - history :].transpose(1, 2))
        # a sum of conv_size shifted products: no transposes, and fast for the usual 4 taps
        length, weight = x.shape[1], self.conv1d.weight.squeeze(1)
        out = self.conv1d.bias.to(x.dtype).expand_as(x)
        for tap in range(self.conv_size):
            out = torch.addcmul(out, padded[:, tap : tap + length], weight[:, tap].to(x.dtype))
        return F.silu(out)


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x))."""

    def __init__(self, hidden_size: int, norm_eps: float = 1e-6, **mixer_options):
        super().__init__()
        self.norm = RMSNorm(hidden_size, norm_eps)
        self.mixer = MambaMixer(hidden_size, **mixer_options)

    def forward(self, x, conv_state=None, ssm_state=None):
        return x + self.mixer(self.norm(x), conv_state, ssm_state)


MAMBA_LIMITS = {"hidden_size": 65536, "num_layers": 1024, "state_size": 1024, "conv_size": 64,
                "expand": 64, "dt_rank": 65536}  # upper ends: only absurd values are refused


def _check_shape(hidden_size, num_layers, state_size, conv_size, expand, dt_rank) -> None:
    """Each size an integer in [1, its limit] (``dt_rank`` may be None: ceil(hidden / 16));
    the message names the argument and its range."""
    values = dict(hidden_size=hidden_size, num_layers=num_layers, state_size=state_size,
                  conv_size=conv_size, expand=expand, dt_rank=dt_rank)
    for name, value in values.items():
        if value is not None or name != "dt_rank":
            check_positive_int(name, value, MAMBA_LIMITS[name])


def mamba_num_parameters(
    hidden_size: int, num_layers: int, state_size: int = 16, conv_size: int = 4, expand: int = 2,
    dt_rank: int | None = None,
) -> int:
    """Parameters of ``MambaStack(...)`` with these arguments, without building it."""
    inner, rank = expand * hidden_size, dt_rank or math.ceil(hidden_size / 16)
    mixer = (hidden_size * 2 * inner  # in_proj
             + inner * conv_size + inner  # depthwise conv and its bias
             + inner * (rank + 2 * state_size)  # x_proj
             + rank * inner + inner  # dt_proj and its bias
             + inner * state_size + inner  # A_log, D
             + inner * hidden_size)  # out_proj
    return num_layers * (mixer + hidden_size) + hidden_size  # + each block's norm, the final norm


class MambaStack(nn.Module):
    """``num_layers`` Mamba blocks plus a final norm over hidden states [B, T, D];
    a drop-in block type next to ``TransformerStack`` (same ``forward(x, cache)``)."""

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        state_size: int = 16,
        conv_size: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        _check_shape(hidden_size, num_layers, state_size, conv_size, expand, dt_rank)
        mixer_options = dict(state_size=state_size, conv_size=conv_size, expand=expand, dt_rank=dt_rank)
        self.layers = nn.ModuleList(
            MambaBlock(hidden_size, norm_eps, **mixer_options) for _ in range(num_layers)
        )
        self.norm = RMSNorm(hidden_size, norm_eps)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reference Mamba init (call again after a generic init such as ``init_weights``)."""
        for layer in self.layers:
            layer.mixer.reset_parameters(num_layers=len(self.layers))
            nn.init.ones_(layer.norm.weight)
        nn.init.ones_(self.norm.weight)

    def forward(
        self,
        x: torch.Tensor,
        cache: MambaCache | None = None,
        valid: torch.Tensor | None = None,
        visible: int | None = None,
    ) -> torch.Tensor:
        """Like ``TransformerStack.forward``: with a cache, continue each row's recurrence;
        ``valid`` [B, 1] (one token per row only) leaves the state of invalid rows untouched.
        ``visible`` is accepted for parity and ignored."""
        if cache is not None and valid is not None:
            if x.shape[1] != 1:
                raise ValueError("a Mamba stack takes per-row validity for one token per row only")
            saved = cache.snapshot()
            output = self.forward(x, cache)
            cache.restore(saved, ~valid[:, 0])
            return output
        for index, layer in enumerate(self.layers):
            if cache is not None:
                x = layer(x, cache.conv_states[index], cache.ssm_states[index])
            elif self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.norm(x)

    def new_cache(self, batch_size: int, device=None, dtype=None, max_len=None) -> MambaCache:
        """A zeroed recurrent state; ``max_len`` is accepted for interface parity and ignored."""
        mixer = self.layers[0].mixer
        return MambaCache(
            len(self.layers), batch_size, mixer.inner_size, mixer.conv_size, mixer.state_size,
            device or self.norm.weight.device, dtype or self.norm.weight.dtype,
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, context: int | None = None) -> float:
        """Training FLOPs per token: 6 per weight plus the scan (x3 for backward);
        independent of ``context`` (accepted for parity with attention stacks)."""
        mixer = self.layers[0].mixer
        scan = 3 * SCAN_FLOPS_PER_STATE * mixer.inner_size * mixer.state_size * len(self.layers)
        return 6 * self.num_parameters() + scan
