"""The parallel layer: how a model is built, checkpointed, compiled and sharded for training.

The steps follow torchtitan's order, each one optional:

1. ``build_on_meta`` + ``materialize`` (``build_on_device``): build the model on the meta
   device (no memory, no random draws), then materialise it on the training device with
   ``to_empty`` and ``model.init_weights()`` under the run's seed: the same weights as an
   eager build under that seed. Initialisation happens before sharding, on each rank's device
   (the weights are whole there for a moment: fine up to several billion parameters on a GPU
   of 80 GB or more; larger models would initialise the shards instead).
2. ``apply_activation_checkpointing``: none, every block (``block``) or selective (``selective``:
   inside each block the outputs of matmuls and attention are kept, the cheap element-wise ops
   are recomputed in the backward pass).
3. ``torch.compile`` of every block (``model.shard_units()``), or of the whole module when
   nothing is sharded (one graph with the head and the loss).
4. FSDP2 ``fully_shard`` of every block, then of the root, over a 1-D device mesh (bf16
   parameters with fp32 gradient reduction on CUDA, plain fp32 on CPU); or DDP; or nothing.
5. The optimizer is built by the caller afterwards, over the (sharded) parameters.

The process group is this module's business too: ``setup`` starts it under ``torchrun`` and,
when FSDP or DDP is asked for in a single process, starts a group of one rank itself. The
trainer asks ``Distributed.is_main`` (logging) and hands its modules, batch indices and stop
flags here; it never calls ``torch.distributed`` itself.

The global batch of one optimizer step is ``batch_size * world_size * grad_accum`` windows:
micro-batch ``k`` of the run (counting across steps) is ``sampler.batch(k)``, and rank ``r``
reads micro-batches ``k = seen + micro * world_size + r``. Two ranks with ``grad_accum=1``
therefore train on exactly the windows one process with ``grad_accum=2`` trains on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import itertools
import os
from typing import Callable, Iterable, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from omnibyte.errors import OmnibyteError

PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")
CHECKPOINTING_MODES = ("none", "block", "selective")
COMPILE_MODES = ("none", "blocks", "model")
M = TypeVar("M", bound=nn.Module)


@dataclasses.dataclass(frozen=True)
class Distributed:
    """Where this process stands: its rank, the number of ranks, the local device index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """A process group is running (torchrun, or one started for a 1-rank FSDP/DDP)."""
        return dist.is_available() and dist.is_initialized()


def resolve_mode(mode: str, world_size: int) -> str:
    """``auto``: DDP under torchrun (more than one rank), nothing in one process. FSDP is asked
    for by name: it pays off once the model, its gradients and AdamW's moments (16 bytes a
    parameter) crowd a GPU, or at scale (docs/distributed.md)."""
    if mode not in PARALLEL_MODES:
        raise OmnibyteError(f"unknown parallel mode {mode!r} (choose from {', '.join(PARALLEL_MODES)})")
    if mode == "auto":
        return "ddp" if world_size > 1 else "none"
    return mode


def setup(mode: str, device: torch.device) -> tuple[str, torch.device, Distributed]:
    """The parallel mode (``auto`` resolved), this rank's device (``cuda:LOCAL_RANK`` under
    torchrun) and the process group, started when needed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    mode = resolve_mode(mode, world_size)
    device = rank_device(device, world_size, int(os.environ.get("LOCAL_RANK", "0")))
    return mode, device, init_distributed(mode, device)


def rank_device(device: torch.device, world_size: int, local_rank: int) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under torchrun, and a CUDA device always with an
    index (``torch.cuda.set_device`` and NCCL refuse a bare ``cuda``); other devices as given."""
    if device.type != "cuda":
        return device
    if world_size > 1:
        return torch.device("cuda", local_rank)
    return torch.device("cuda", 0 if device.index is None else device.index)


def micro_batch_index(seen: int, micro: int, world: Distributed) -> int:
    """The sampler index of this rank's micro-step ``micro`` after ``seen`` micro-batches: rank
    r of R reads ``seen + micro * R + r``, the windows one process with R times the
    accumulation reads."""
    return seen + micro * world.world_size + world.rank


def any_rank(flags: list[bool], world: Distributed, device: torch.device) -> list[bool]:
    """Each flag true on any rank (every rank must call it)."""
    if world.world_size == 1 or not dist.is_initialized():
        return flags
    tensor = torch.tensor(flags, dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(flag) for flag in tensor.tolist()]


def init_distributed(mode: str, device: torch.device) -> Distributed:
    """Start the process group torchrun describes (``WORLD_SIZE`` > 1), or a group of one rank
    when ``mode`` is ddp/fsdp in a single process; nothing for ``none`` in one process.
    NCCL on CUDA (``device`` becomes the current CUDA device), gloo otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized() and (world_size > 1 or mode in ("ddp", "fsdp")):
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=30)
        if "MASTER_ADDR" in os.environ or world_size > 1:
            dist.init_process_group(backend, timeout=timeout)
        else:  # a single process without torchrun: a group of one over an in-memory store
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    if dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)
    return Distributed(0, 1, local_rank)


def shutdown() -> None:
    """Tear down the process group at the end of a run, every rank together. Left to the
    interpreter's exit, a two-rank gloo run on the loaded 2-core VM aborted a rank after it had
    finished and saved in 4 of about 65 runs ("terminate called without an active exception":
    torchrun then fails the job); with the destroy alone in 1 of 30; with the barrier first in 0
    of 60."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears down while another still works (rank 0 writes the last files)
        dist.destroy_process_group()


def build_on_meta(build: Callable[[], M]) -> M:
    """``build()`` on the meta device: shapes only, no memory, no random draws."""
    with torch.device("meta"):
        return build()


def materialize(model: M, device: torch.device | str, seed: int | None) -> M:
    """A model built on the meta device, materialised on ``device`` (``to_empty``) and
    initialised by its ``init_weights()`` with torch's CPU generator seeded by ``seed`` (the
    caller's generator is left as it was): the weights an eager build under ``seed`` has. A
    model with real weights is only moved to ``device``. A model too large for the host's
    memory is thus never built there."""
    if not any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        return model.to(device)
    model = model.to_empty(device=device)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            model.init_weights()
    return model


def build_on_device(build: Callable[[], M], device: torch.device | str, seed: int | None) -> M:
    """``build()`` on the meta device, then ``materialize``d on ``device`` under ``seed``."""
    return materialize(build_on_meta(build), device, seed)


# ---- activation checkpointing --------------------------------------------------------------
# selective: keep what is expensive to recompute (matmuls, attention), recompute the rest
_SAVED_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}
for _name in ("_scaled_dot_product_cudnn_attention",):
    if hasattr(torch.ops.aten, _name):
        _SAVED_OPS.add(getattr(torch.ops.aten, _name).default)


def _selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts():
    return create_selective_checkpoint_contexts(_selective_policy)


def apply_activation_checkpointing(units: Iterable[nn.Module], mode: str) -> None:
    """Wrap each unit's forward in ``torch.utils.checkpoint`` (in place: parameter names,
    hence checkpoints, do not change). Without gradients (validation, decoding) the forward
    runs as it is."""
    if mode not in CHECKPOINTING_MODES:
        raise OmnibyteError(f"unknown activation checkpointing {mode!r} (choose from {', '.join(CHECKPOINTING_MODES)})")
    if mode == "none":
        return
    for unit in units:
        forward = unit.forward

        @functools.wraps(forward)
        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            options = {"context_fn": _selective_contexts} if mode == "selective" else {}
            return checkpoint(_forward, *args, use_reentrant=False, **options, **kwargs)

        unit.forward = checkpointed


# ---- compile, FSDP2, DDP -------------------------------------------------------------------
def compile_units(units: Iterable[nn.Module]) -> None:
    """``torch.compile`` each block in place (``Module.compile``: names unchanged)."""
    for unit in units:
        unit.compile()


def fully_shard_model(root: nn.Module, units: list[nn.Module], device: torch.device, world_size: int) -> None:
    """FSDP2: each unit sharded on its own (its parameters gathered just before its forward and
    freed after), then the root with what is left (embeddings, head, final norms, task heads)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if device.type == "cuda" else MixedPrecisionPolicy())
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(root, mesh=mesh, mp_policy=policy)


def parallelize(
    root: nn.Module,
    units: list[nn.Module],
    mode: str,
    device: torch.device,
    world: Distributed,
    *,
    checkpointing: str = "none",
    compile_mode: str = "none",
    find_unused_parameters: bool = False,
) -> nn.Module:
    """Activation checkpointing, compile, then FSDP2/DDP, in that order, over ``root`` (the
    module whose forward the trainer calls, on ``device`` already) and its blocks ``units``.
    Returns the module to call: ``root`` itself (fsdp: sharded in place), its compiled form or
    its DDP wrapper. Build the optimizer after this, over ``root.parameters()``.

    ``compile_mode``: ``blocks`` compiles each unit (torchtitan's way; what FSDP needs, its
    hooks sit between the blocks), ``model`` the whole root (one graph with the head and the
    loss: the faster choice without FSDP), ``none``."""
    if mode == "none" and world.world_size > 1:
        raise OmnibyteError("--parallel none runs one process; under torchrun pass --parallel ddp or fsdp")
    if compile_mode not in COMPILE_MODES:
        raise OmnibyteError(f"unknown compile mode {compile_mode!r} (choose from {', '.join(COMPILE_MODES)})")
    if compile_mode == "model" and mode == "fsdp":
        compile_mode = "blocks"
    apply_activation_checkpointing(units, checkpointing)
    if compile_mode == "blocks":
        compile_units(units)
    if mode == "fsdp":
        fully_shard_model(root, units, device, world.world_size)
        return root
    module = torch.compile(root) if compile_mode == "model" else root
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                   find_unused_parameters=find_unused_parameters)
    return module


def gradient_sync(module: nn.Module, mode: str, sync: bool):
    """Context for one micro-step of gradient accumulation: gradients are reduced across the
    ranks only when ``sync`` (the last micro-step of an optimizer step)."""
    if sync or mode == "none":
        if mode == "fsdp":
            module.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if mode == "fsdp":
        module.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    return module.no_sync()


def full_state_dict(root: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """``root``'s whole weights on the CPU. Under FSDP the shards are gathered (a collective:
    every rank calls it) and only rank 0 gets them; elsewhere every rank has them already."""
    if mode != "fsdp":
        return {name: tensor.detach().cpu() for name, tensor in root.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def all_ranks_mean(value: torch.Tensor, world: Distributed) -> torch.Tensor:
    """The mean of a scalar over the ranks (the loss every rank computed on its own windows)."""
    if world.world_size == 1 or not dist.is_initialized():
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world.world_size


def barrier(world: Distributed) -> None:
    if world.world_size > 1 and dist.is_initialized():
        dist.barrier()


def broadcast_object(value, world: Distributed):
    """Rank 0's ``value`` on every rank."""
    if world.world_size == 1 or not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
