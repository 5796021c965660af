"""The training loop: AdamW, warmup + cosine, accumulation, clipping, bf16 autocast,
validation with early stopping, atomic checkpoints and exact resume, on one device or many
(``torchrun``): how the model is built, checkpointed, compiled and sharded (FSDP2, DDP) is the
parallel layer's business (``omnibyte.train.parallel``); the loop only asks whether it is rank 0.

A run directory holds the model that ``load_model(RUN)`` loads (``config.json`` +
``model.safetensors``): the best one by validation (also copied to ``best/``), or the latest
without validation data; its ``config.json`` records the step it is from (``"step"``). ``trainer_state.safetensors``
holds the latest state of a one-process run, from which ``--resume`` continues; runs with a
process group (``parallel`` ddp or fsdp) save ``checkpoints/step-N/`` with
``torch.distributed.checkpoint`` from every rank instead (``omnibyte.train.sharded_checkpoint``),
which any number of ranks can resume. Runs are reproducible: the config's
``seed`` fixes the data order and every random draw in training, and ``seeded_model`` the
initial weights. SIGTERM and SIGINT finish the step in progress, save, and stop.

The loop trains a ``Task`` (``omnibyte.tasks``), next-byte prediction unless told otherwise,
and knows it only through the task interface: the loss, the validation sums and report, the
task's own trainable modules, and where batches come from."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, TypeVar

import torch
from tqdm import tqdm

from omnibyte.data import Batch, ByteCorpus
from omnibyte.devices import (
    ATTENTION_BACKENDS,
    DEVICE_NAME,
    attention_backend,
    autocast,
    check_training_fits,
    configure_cpu_threads,
    resolve_device,
)
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import atomic_write_bytes, check_output_folder, remove_stale_temporaries
from omnibyte.models.base import BaseConfig, ByteModel
from omnibyte.models.registry import seeded
from omnibyte.models.serialization import load_weights, save_model, saved_document
from omnibyte.models.validation import ConfigError, Limit
from omnibyte.tasks import NextByteTask, Task
from omnibyte.train import checkpoint, parallel, sharded_checkpoint
from omnibyte.train.metrics import MetricsLog, plot_loss_curve
from omnibyte.train.schedule import TimeFittedSteps, learning_rate

LN2 = math.log(2)
BEST_DIR = "best"  # a copy of the best model, as the run directory has always had
MAX_COUNT = 2**40  # steps, windows, ...: far beyond any run, small enough for int64 arithmetic
M = TypeVar("M", bound=torch.nn.Module)


def seeded_model(build: Callable[[], M], seed: int) -> M:
    """``build()`` with torch's generator seeded by ``seed``: the same initial weights in every
    run (the CLI builds the model with ``TrainConfig.seed``, then hands it to the Trainer)."""
    with seeded(seed):
        return build()


@dataclasses.dataclass
class TrainConfig(BaseConfig):
    LIMITS: ClassVar[dict[str, Limit]] = {
        "seq_len": Limit(1, 2**30),  # the model's context bounds it too (multiscale: up to 2**30)
        "batch_size": Limit(1, 2**20),
        "grad_accum": Limit(1, 2**20),
        "steps": Limit(1, MAX_COUNT),
        "lr": Limit(0.0, None, low_open=True),
        "min_lr_ratio": Limit(0.0, 1.0),
        "warmup_steps": Limit(-1, MAX_COUNT),
        "weight_decay": Limit(0.0, None),
        "beta1": Limit(0.0, 1.0, high_open=True),
        "beta2": Limit(0.0, 1.0, high_open=True),
        "grad_clip": Limit(0.0, None),
        "eval_every": Limit(0, MAX_COUNT),
        "eval_windows": Limit(0, MAX_COUNT),
        "patience": Limit(0, MAX_COUNT),
        "save_every": Limit(0, MAX_COUNT),
        "log_every": Limit(1, MAX_COUNT),
        "seed": Limit(0, 2**63 - 1),
        "time_limit": Limit(0.0, None),
        "loss_chunk": Limit(0, 2**24),
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "parallel": parallel.PARALLEL_MODES,
        "activation_checkpointing": parallel.CHECKPOINTING_MODES,
        "attention_backend": ATTENTION_BACKENDS,
    }

    seq_len: int = 1024
    batch_size: int = 8  # per device (rank) and micro-step: a step trains batch_size * ranks * grad_accum windows
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = -1  # -1: 5% of steps, at most 1000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0: no clipping
    eval_every: int = 250  # 0: never validate
    eval_windows: int = 64  # validation windows of seq_len per evaluation (0: all)
    patience: int = 0  # evaluations without improvement before stopping (0: never stop early)
    save_every: int = 500  # 0: save only at the end (and when interrupted)
    log_every: int = 10
    seed: int = 0  # data order and every random draw in training (seeded_model: initial weights)
    compile: bool = False
    device: str = "auto"
    time_limit: float = 0.0  # seconds of training before stopping cleanly (0: none)
    # with time_limit: measure the step rate and set ``steps`` so that the schedule ends when the
    # time is up (TimeFittedSteps); a resumed run keeps the steps planned (saved in train_config.json)
    fit_steps_to_time: bool = False
    tensorboard: bool = False
    parallel: str = "auto"  # none, ddp, fsdp; auto: ddp under torchrun, none in one process
    activation_checkpointing: str = "none"  # none, block, selective
    loss_chunk: int = 0  # positions per chunk of the 256-way head + cross-entropy (0: all at once)
    attention_backend: str = "auto"  # SDPA kernels for training: auto, flash, cudnn, efficient, math
    # augmented copies of the training files (omnibyte.data.augment; "" for none): the caller makes
    # them before training; recorded here so that --resume makes the same ones
    augment: str = ""

    def validate(self) -> None:
        super().validate()
        if not DEVICE_NAME.match(self.device):
            raise ConfigError("device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.fit_steps_to_time and not self.time_limit:
            raise ConfigError("fit_steps_to_time", "needs a time_limit > 0 to fit the steps to")

    @property
    def warmup(self) -> int:
        return min(1000, self.steps // 20) if self.warmup_steps < 0 else self.warmup_steps


@dataclasses.dataclass
class TrainResult:
    """Where a run ended. The ``*_bits_per_byte`` names come from next-byte training: for
    another task ``train_bits_per_byte`` is its last loss in bits and the ``val`` fields hold
    its validation ``objective``; ``val_metrics`` is the task's whole last validation report.
    ``best_step`` is the step of the model saved in ``out_dir`` when validation chose it.
    ``already_finished``: ``fit(resume=True)`` found the run complete and did nothing."""

    step: int
    train_bits_per_byte: float | None
    val_bits_per_byte: float | None
    best_val_bits_per_byte: float | None
    stopped_early: bool
    out_dir: Path
    val_metrics: dict[str, float] | None = None
    best_step: int | None = None
    already_finished: bool = False

    @property
    def model_step(self) -> int:
        """The step of the model in ``out_dir`` (what ``load_model(out_dir)`` loads)."""
        return self.best_step if self.best_step is not None else self.step

    def summary(self) -> str:
        """One line for the user, whatever is known (no field may be None-formatted)."""
        best = (f"best validation {self.best_val_bits_per_byte:.4f} at step {self.model_step:,}"
                if self.best_val_bits_per_byte is not None else "")
        if self.already_finished:
            why = "stopped early" if self.stopped_early else "finished"
            advice = "raise --patience or --steps" if self.stopped_early else "pass a larger --steps"
            return (f"{self.out_dir} already {why} at step {self.step:,}" + (f" ({best})" if best else "")
                    + f"; nothing to do ({advice} to continue)")
        details = []
        if self.train_bits_per_byte is not None:
            details.append(f"train {self.train_bits_per_byte:.4f} bits/byte")
        if self.val_bits_per_byte is not None:
            details.append(f"validation {self.val_bits_per_byte:.4f}")
        if best:
            details.append(best)
        line = f"step {self.step:,}" + (": " + ", ".join(details) if details else "")
        line += " (stopped early)" if self.stopped_early else ""
        return line + f"; model of step {self.model_step:,} saved to {self.out_dir}"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving a complete checkpoint. A
    ``KeyboardInterrupt``, so callers that handle Ctrl-C handle it; ``signal_number`` tells
    which signal (exit status ``128 + signal_number`` by convention)."""

    def __init__(self, signal_number: int, step: int):
        super().__init__(f"{signal.Signals(signal_number).name}: checkpoint saved at step {step}")
        self.signal_number, self.step = signal_number, step


class TaskLoss(torch.nn.Module):
    """``task.loss(model, batch)`` as one module's forward, holding the model and the task's
    own modules: compile and DDP wrap this module, so they see (and DDP all-reduces the
    gradients of) everything that trains, and a family's own loss inside ``model.loss``
    (bGPT's patch subset, chunked multiscale loss) is compiled with the rest."""

    def __init__(self, model: ByteModel, task: Task):
        super().__init__()
        self.model = model
        self.task_modules = torch.nn.ModuleDict(task.modules())
        self.task = task  # not a Module: its trainable parts are registered just above

    def forward(self, batch: Batch, metrics: bool = False) -> torch.Tensor | dict[str, float]:
        """The loss, or with ``metrics`` the task's validation sums: validation goes through
        this forward too, so a sharded (FSDP) root gathers its weights for it."""
        if metrics:
            return self.task.metrics(self.model, batch)
        return self.task.loss(self.model, batch)


class Trainer:
    """Trains ``model`` for ``task`` (default: next-byte prediction) on ``train_corpus``;
    everything it writes goes to ``out_dir``.

    The task decides what is learnt and from which batches: the training batches are
    ``task.train_batches(train_corpus, seq_len, batch_size, seed).batch(index)``, the
    validation batches ``task.eval_batches(val_corpus, seq_len, batch_size)``. A task whose
    batches carry labels (``Batch.labels``) therefore brings its own batch source; the loop
    itself never changes. ``task.modules()`` (a classification head) are optimised with the
    model and saved in the trainer state; the task's ``to_dict()`` is recorded there too, and
    resuming a run with another task is refused.
    """

    def __init__(
        self,
        model: ByteModel,
        train_corpus: ByteCorpus,
        config: TrainConfig,
        out_dir: str | Path,
        val_corpus: ByteCorpus | None = None,
        task: Task | None = None,
        progress: bool = True,
    ):
        config.validate()
        self.config = config
        self.out_dir = check_output_folder(out_dir, "--out")
        self.task = task if task is not None else NextByteTask()
        # the parallel layer: which mode, this rank's device, the process group
        self.parallel_mode, self.device, self.world = parallel.setup(config.parallel, resolve_device(config.device))
        if self.device.type == "cpu":
            configure_cpu_threads()
        if config.seq_len > model.max_seq_len:
            raise OmnibyteError(f"--seq-len {config.seq_len} exceeds the model's context of {model.max_seq_len}")
        # a model built on the meta device gets the weights an eager build under the seed gets
        self.model = parallel.materialize(model, self.device, config.seed)
        if self.parallel_mode != "fsdp":  # the estimate counts whole weights, gradients and states
            check_training_fits(self.model.training_memory(config.batch_size, config.seq_len), self.device,
                                f"--batch-size {config.batch_size} x --seq-len {config.seq_len:,}")
        self.model.loss_chunk = config.loss_chunk
        # every random draw of a new run (bGPT's patch subsets, dropout) follows the seed; a
        # resumed run restores the generator it saved instead
        torch.manual_seed(config.seed)
        self.loss_module = TaskLoss(self.model, self.task).to(self.device)  # the model and the task's modules
        self.train_corpus, self.val_corpus = train_corpus, val_corpus
        self.sampler = self.task.train_batches(train_corpus, config.seq_len, config.batch_size, config.seed)
        # checkpointing, compile, FSDP2/DDP; then the optimizer, over the sharded parameters
        self.forward_model = parallel.parallelize(
            self.loss_module, self.model.shard_units(), self.parallel_mode, self.device, self.world,
            checkpointing=config.activation_checkpointing,
            compile_mode=("blocks" if self.parallel_mode == "fsdp" else "model") if config.compile else "none",
            find_unused_parameters=self.task.unused_parameters)
        self.optimizer = self._make_optimizer()
        self.step = 0
        self.micro_batches_seen = 0  # the data position: micro-batches of every rank so far
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.last_val: float | None = None  # the objective of the latest validation
        self.evals_without_improvement = 0
        self.stopped_early = False
        self.progress = progress and self.is_main
        self.callbacks: list[Callable[[Trainer], None]] = []  # run after every optimizer step
        self._stop_signal: int | None = None  # set by SIGINT/SIGTERM during fit
        self._mid_step = False  # True while train_step changes the state (a save then would be torn)

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def world_size(self) -> int:
        return self.world.world_size

    @property
    def sharded_checkpoints(self) -> bool:
        """DCP folders from every rank (ddp, fsdp) rather than the one-process single file."""
        return self.parallel_mode != "none"

    def _make_optimizer(self) -> torch.optim.AdamW:
        # The model's parameters come first, in their usual order, then the task's: optimizer
        # state is saved by parameter index, so next-byte runs resume from older states.
        parameters = list(self.loss_module.parameters())
        decay = [p for p in parameters if p.dim() >= 2]
        no_decay = [p for p in parameters if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(self.config.beta1, self.config.beta2),
                                 fused=self.device.type == "cuda")

    # ---- checkpoints --------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {"step": self.step, "best_val": self.best_val, "best_step": self.best_step,
                "evals_without_improvement": self.evals_without_improvement,
                "stopped_early": self.stopped_early,
                "train_config": self.config.to_dict(), "world_size": self.world_size,
                "micro_batches_seen": self.micro_batches_seen, "parallel": self.parallel_mode,
                "task": self.task.to_dict()}

    def save(self) -> None:
        """The full state, for ``--resume``; and the model in ``out_dir`` while validation has
        not chosen one (afterwards ``out_dir`` keeps the best, saved when it was found).
        Every rank calls it: with a process group each writes its part of the checkpoint."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        if self.sharded_checkpoints:
            sharded_checkpoint.save(self.out_dir, self.loss_module, self.optimizer, self._trainer_state(),
                                    saved_document(self.model, self.task.name), rng, self.is_main,
                                    lambda: parallel.barrier(self.world))
        elif self.is_main:
            checkpoint.save_trainer_state(self.out_dir, self.model, self.optimizer, self._trainer_state(), rng,
                                          task=self.task.name,
                                          task_weights=self.loss_module.task_modules.state_dict())
        if self.best_val is None:
            self._save_model(self.out_dir)

    def full_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The model's and the task's weights, whole, on the CPU of rank 0 (gathered from the
        shards under FSDP: every rank must call it; the other ranks get empty dicts)."""
        weights = parallel.full_state_dict(self.loss_module, self.parallel_mode)
        model = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
        task = {k.removeprefix("task_modules."): v for k, v in weights.items() if k.startswith("task_modules.")}
        return model, task

    def _save_model(self, directory: Path) -> None:
        """The model with its task (and the task's own weights, if it has any) and its step.
        Every rank calls it (FSDP gathers the weights); rank 0 writes."""
        weights, task_weights = self.full_weights()
        if self.is_main:
            save_model(self.model, directory, task=self.task.to_dict(), task_weights=task_weights,
                       step=self.step, weights=weights)
        parallel.barrier(self.world)

    def _load_task_tensors(self, weights: dict[str, torch.Tensor]) -> None:
        try:
            self.loss_module.task_modules.load_state_dict(weights)
        except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
            detail = " ".join(str(error).split())
            raise OmnibyteError(f"task state in {self.out_dir} does not fit task {self.task.name!r}: "
                                f"{detail}") from None

    def resume(self) -> bool:
        """Restore the newest state in ``out_dir`` (a DCP checkpoint folder or the single
        file) if there is one; True when resumed. Whatever it holds is checked against this
        model, task and optimizer first: a damaged or crafted state is a one-line
        ``OmnibyteError``. A DCP checkpoint resumes on any number of ranks."""
        found = sharded_checkpoint.latest(self.out_dir)
        if found is None:
            return False
        if found.kind == "dcp":
            saved_meta = sharded_checkpoint.read_metadata(found.path)
            document, state, rng = saved_meta.document, saved_meta.state, saved_meta.rng
            self._check_same_run(document, state)
            sharded_checkpoint.load_into(found.path, self.loss_module, self.optimizer)
        else:
            saved = checkpoint.load_trainer_state(self.out_dir)
            document, state, rng = saved.document, saved.state, saved.rng
            self._check_same_run(document, state)
            if self.parallel_mode == "fsdp":  # whole tensors, sharded as they are set
                self._load_whole_state_into_shards(saved, found.path)
            else:
                load_weights(self.model, saved.weights, found.path)
                self._load_task_tensors(saved.task_weights)
                self._load_optimizer(saved.optimizer, found.path)
        self._restore_rng(rng, found.path)
        self.step = state["step"]
        # states saved before the position was recorded drew step * grad_accum * ranks batches
        self.micro_batches_seen = state.get(
            "micro_batches_seen", state["step"] * self.config.grad_accum * state.get("world_size", 1))
        self.best_val = state.get("best_val")
        self.best_step = state.get("best_step")
        self.evals_without_improvement = state.get("evals_without_improvement", 0)
        self.stopped_early = state.get("stopped_early", False)
        return True

    def _load_whole_state_into_shards(self, saved: checkpoint.TrainerState, source: Path) -> None:
        """A one-process state (the single file) into FSDP shards: the weights and the
        optimizer moments by parameter name, each rank keeping its shard."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        self._check_optimizer_state(saved.optimizer, source)
        weights = {f"model.{name}": tensor for name, tensor in
                   self.model.upgrade_state_dict(dict(saved.weights)).items()}
        weights.update({f"task_modules.{name}": tensor for name, tensor in saved.task_weights.items()})
        expected = self.loss_module.state_dict().keys()
        if set(weights) != set(expected):
            missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
            raise OmnibyteError(f"{source} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        names = {id(parameter): name for name, parameter in self.loss_module.named_parameters()}
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        optimizer_state = {
            "state": {names[id(parameters[index])]: values for index, values in saved.optimizer["state"].items()},
            "param_groups": [{**group, "params": [names[id(parameters[index])] for index in group["params"]]}
                             for group in saved.optimizer["param_groups"]],
        }
        whole = StateDictOptions(full_state_dict=True)
        try:
            set_model_state_dict(self.loss_module, weights, options=whole)
            set_optimizer_state_dict(self.loss_module, self.optimizer, optimizer_state, options=whole)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
            raise OmnibyteError(f"{source} does not fit: {' '.join(str(error).split())[:300]}") from None

    def _check_same_run(self, document: dict, state: dict) -> None:
        if document["arch"] != self.model.arch or document["config"] != self.model.config.to_dict():
            raise OmnibyteError(f"{self.out_dir} holds a different model ({document['arch']}); "
                                "use another --out or the same model options")
        saved_task = state.get("task", document["task"])  # states saved before tasks: next-byte
        if saved_task != self.task.to_dict():
            raise OmnibyteError(f"{self.out_dir} was trained for task {_describe_task(saved_task)}, not "
                                f"{_describe_task(self.task.to_dict())}; use another --out or the same task")

    def _load_optimizer(self, optimizer_state: dict[str, Any], source: Path) -> None:
        """Load a saved optimizer state after checking it fits the parameters: AdamW itself
        would accept mis-shaped moments and fail only at the next step."""
        self._check_optimizer_state(optimizer_state, source)
        try:
            self.optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as error:
            raise OmnibyteError(f"optimizer state in {source} does not fit: {error}") from None

    def _check_optimizer_state(self, optimizer_state: dict[str, Any], source: Path) -> None:
        """Every saved moment has its parameter's (whole) shape; hyper-parameters are of the
        right kind; groups name existing parameters."""
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        for index, values in optimizer_state["state"].items():
            if index >= len(parameters):
                raise OmnibyteError(f"optimizer state in {source} is for parameter {index}; "
                                    f"the model has {len(parameters)}")
            for key, tensor in values.items():
                expected = () if key == "step" else tuple(parameters[index].shape)
                if tuple(tensor.shape) != expected or not tensor.is_floating_point():
                    raise OmnibyteError(f"optimizer state in {source}: {key} of parameter {index} has "
                                        f"{tensor.dtype} shape {tuple(tensor.shape)}, expected {expected}")
        for current, saved in zip(self.optimizer.param_groups, optimizer_state["param_groups"]):
            for key, value in current.items():
                if key != "params" and key in saved and not _same_kind(value, saved[key]):
                    raise OmnibyteError(f"optimizer state in {source}: {key!r} is {saved[key]!r}")
        if [len(group["params"]) for group in optimizer_state["param_groups"]] != [
                len(group["params"]) for group in self.optimizer.param_groups] or any(
                index >= len(parameters) for group in optimizer_state["param_groups"] for index in group["params"]):
            raise OmnibyteError(f"optimizer state in {source} has parameter groups of another shape")

    def _restore_rng(self, rng: dict[str, torch.Tensor], source: Path) -> None:
        try:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        except (RuntimeError, ValueError, TypeError) as error:
            raise OmnibyteError(f"RNG state in {source} cannot be restored: {str(error).splitlines()[0]}") from None

    # ---- one step -----------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns mean loss (nats)."""
        config = self.config
        self._mid_step = True
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, config.lr, config.warmup, config.steps, config.min_lr_ratio)
        total_loss = torch.zeros((), device=self.device)
        for micro in range(config.grad_accum):
            batch_index = parallel.micro_batch_index(self.micro_batches_seen, micro, self.world)
            batch = self.sampler.batch(batch_index).to(self.device, non_blocking=True)
            sync = micro == config.grad_accum - 1
            with parallel.gradient_sync(self.forward_model, self.parallel_mode, sync), autocast(self.device), \
                    attention_backend(config.attention_backend):
                loss = self.forward_model(batch)
                (loss / config.grad_accum).backward()
            total_loss += loss.detach() / config.grad_accum
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.loss_module.parameters(), config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.micro_batches_seen += config.grad_accum * self.world_size
        self._mid_step = False  # not in a finally: an exception part-way leaves the state torn
        return float(parallel.all_ranks_mean(total_loss, self.world))

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float] | None:
        """The task's validation report over (a fixed prefix of) the validation batches;
        None without validation data."""
        if self.val_corpus is None or self.val_corpus.num_bytes == 0:
            return None
        self.loss_module.eval()
        totals: dict[str, float] = {}
        windows = 0
        for batch in self.task.eval_batches(self.val_corpus, self.config.seq_len, self.config.batch_size):
            batch = batch.to(self.device)
            with autocast(self.device):
                sums = self.loss_module(batch, metrics=True)
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
            windows += batch.tokens.shape[0]
            if self.config.eval_windows and windows >= self.config.eval_windows:
                break
        self.loss_module.train()
        return self.task.summarize(totals) if windows else None

    def validate(self) -> float | None:
        """The task's validation objective (next-byte: bits per byte); lower is better."""
        report = self.validation_metrics()
        return None if report is None else report[self.task.objective]

    # ---- the loop -----------------------------------------------------------------
    def is_finished(self) -> bool:
        """True when the run has nothing left to do: all ``steps`` done, or stopped early
        with patience still exhausted (a larger ``steps`` or ``patience`` continues it)."""
        patience_spent = bool(self.config.patience) and self.evals_without_improvement >= self.config.patience
        return self.step >= self.config.steps or (self.stopped_early and patience_spent)

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``config.steps`` (or early stopping, or the time limit) and save.

        ``resume``: continue the run in ``out_dir``; a run that is already complete is left
        untouched and the result says so (``already_finished``, ``summary()``). SIGINT and
        SIGTERM end the step in progress, save a complete checkpoint and raise
        ``TrainingInterrupted``."""
        config = self.config
        self._prepare_out_dir()
        if resume:
            if self.resume():
                if self.is_finished():
                    return self._result(None, None, None, already_finished=True)
                if self.is_main:
                    print(f"resumed from step {self.step} in {self.out_dir}")
        elif sharded_checkpoint.latest(self.out_dir) is not None:
            raise OmnibyteError(f"{self.out_dir} already holds a run: pass --resume or choose another --out")
        metrics = MetricsLog(self.out_dir / "metrics.jsonl",
                             self.out_dir / "tensorboard" if config.tensorboard else None) if self.is_main else None
        if metrics:
            metrics.truncate_after(self.step)
            atomic_write_bytes(self.out_dir / "train_config.json", (config.to_json() + "\n").encode())
        self.loss_module.train()
        bar = tqdm(total=config.steps, initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True, desc="train")
        self._stop_signal = None
        try:
            with self._signals_stop_training():
                last_loss, last_report, last_eval_step = self._loop(bar, metrics)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            bar.close()
            self._save_after_interrupt()
            raise
        bar.close()
        if self._stop_signal is None and last_eval_step != self.step and config.eval_every:
            # stopped by the time limit between evaluations: the final weights compete too
            last_report = self.validation_metrics()
            self._record_validation(last_report, metrics, count_patience=False)
        self.save()
        if metrics:
            metrics.close()
            if (self.out_dir / "metrics.jsonl").exists():
                plot_loss_curve(self.out_dir / "metrics.jsonl", self.out_dir / "loss_curve.png")
        if self._stop_signal is not None:
            if self.is_main:
                print(f"stopped by {signal.Signals(self._stop_signal).name}: checkpoint saved at step "
                      f"{self.step}; continue with --resume")
            raise TrainingInterrupted(self._stop_signal, self.step)
        last_val = None if last_report is None else last_report[self.task.objective]
        return self._result(last_loss, last_val, last_report)

    def _loop(self, bar: tqdm, metrics: MetricsLog | None) -> tuple[float | None, dict | None, int | None]:
        """Steps until done, stopped early, out of time or asked to stop by a signal (after the
        step in progress, its evaluation and checkpoint). Returns the last loss (bits), the
        last validation report and the step it was made at."""
        config = self.config
        bytes_per_step = config.batch_size * config.seq_len * config.grad_accum * self.world_size
        started = window_start = time.time()
        window_steps, loss_sum = 0, 0.0
        last_loss = last_report = last_eval_step = None
        # a resumed run keeps the steps its first process planned (one stopped before its first
        # plan makes one, over this process's time limit)
        fitting = TimeFittedSteps(config.time_limit, self.step, started) \
            if config.fit_steps_to_time and self.step < TimeFittedSteps.FIRST_PLAN else None
        if fitting is not None:  # the given steps are only a first guess: never end before the first plan
            config.steps = max(config.steps, self.step + TimeFittedSteps.FIRST_PLAN + 1)
        while self.step < config.steps:
            loss = self.train_step()
            if fitting is not None and fitting.due(self.step):
                self._fit_steps_to_time(fitting, bar)
            loss_sum, window_steps = loss_sum + loss, window_steps + 1
            last_loss = loss / LN2
            if not math.isfinite(loss):
                raise OmnibyteError(f"loss became {loss} at step {self.step}; lower --lr")
            if self.step % config.log_every == 0 or self.step == config.steps:
                elapsed = time.time() - window_start
                record = {"step": self.step, "loss": loss_sum / window_steps,
                          "bits_per_byte": loss_sum / window_steps / LN2,
                          "lr": self.optimizer.param_groups[0]["lr"],
                          "bytes_per_s": bytes_per_step * window_steps / max(elapsed, 1e-9)}
                if metrics:
                    metrics.log(record)
                bar.set_postfix(bpb=f"{record['bits_per_byte']:.3f}", bytes_s=_human(record["bytes_per_s"]),
                                **self._val_postfix())
                window_start, window_steps, loss_sum = time.time(), 0, 0.0
            bar.update(1)
            if config.eval_every and (self.step % config.eval_every == 0 or self.step == config.steps):
                last_report, last_eval_step = self.validation_metrics(), self.step
                self.stopped_early = self._record_validation(last_report, metrics)
            if config.save_every and self.step % config.save_every == 0:
                self.save()
            for callback in self.callbacks:
                callback(self)
            time_up = bool(config.time_limit) and time.time() - started > config.time_limit
            if self.stopped_early or self._agree_to_stop(time_up):
                break
        return last_loss, last_report, last_eval_step

    def _fit_steps_to_time(self, fitting: TimeFittedSteps, bar: tqdm) -> None:
        """A new plan of the steps (rank 0's, on every rank), written to train_config.json so that
        a resumed run keeps it."""
        planned = fitting.observe(self.step, time.time())
        if self.world_size > 1:
            planned = parallel.broadcast_object(planned, self.world)
        if planned is None:
            return
        fitting.accept(self.step, planned)
        if self.is_main and fitting.plans == 1:
            tqdm.write(f"steps auto: {planned:,} steps fit --time-limit {self.config.time_limit:g} s "
                       f"(measured at step {self.step}; planned again as training goes)")
        self.config.steps = planned
        bar.total = planned
        bar.refresh()
        if self.is_main:
            atomic_write_bytes(self.out_dir / "train_config.json", (self.config.to_json() + "\n").encode())

    def _agree_to_stop(self, time_up: bool) -> bool:
        """True when this step is the last: a signal arrived or time is up. Under torchrun
        every rank must stop after the same step (or the others wait forever in the next
        all-reduce), so the ranks agree: one rank's reason stops them all."""
        reasons = parallel.any_rank([self._stop_signal is not None, time_up], self.world, self.device)
        if reasons[0] and self._stop_signal is None:
            self._stop_signal = int(signal.SIGTERM)  # another rank was signalled
        return any(reasons)

    def _val_postfix(self) -> dict[str, str]:
        return {} if self.best_val is None else {"best_val": f"{self.best_val:.3f}"}

    def _result(self, last_loss, last_val, last_report, already_finished: bool = False) -> TrainResult:
        return TrainResult(self.step, last_loss, last_val, self.best_val, self.stopped_early, self.out_dir,
                           last_report, self.best_step, already_finished)

    def _prepare_out_dir(self) -> None:
        """Create ``out_dir`` (one-line error when it cannot be) and remove temporaries that a
        save killed part-way left in it."""
        if self.is_main:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OmnibyteError(f"cannot create --out {self.out_dir}: {error.strerror or error}") from None
            remove_stale_temporaries(self.out_dir)
            sharded_checkpoint.remove_temporaries(self.out_dir)
        parallel.barrier(self.world)

    def _save_after_interrupt(self) -> None:
        """Save unless the interrupt tore a step apart (the last checkpoint then stays)."""
        if self._mid_step:
            if self.is_main:
                print(f"interrupted during step {self.step + 1}: the last checkpoint stays; "
                      "continue with --resume")
            return
        self.save()
        if self.is_main:
            print(f"interrupted: checkpoint saved at step {self.step}; continue with --resume")

    @contextlib.contextmanager
    def _signals_stop_training(self) -> Iterator[None]:
        """While inside, SIGINT and SIGTERM ask the loop to stop after the step in progress
        (a second SIGINT stops at once). Handlers can only be installed by the main thread;
        elsewhere signals keep their meaning. The previous handlers are restored after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signal_number: int, frame: Any) -> None:
            if self._stop_signal is not None and signal_number == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signal_number

        previous = {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)

    def _record_validation(self, report: dict[str, float] | None, metrics: MetricsLog | None,
                           count_patience: bool = True) -> bool:
        """Log a validation report (each entry as ``val_<key>``: next-byte logs
        ``val_bits_per_byte``); a new best model (by the task's objective) is saved into
        ``out_dir``, where ``load_model`` finds it. True when patience ran out."""
        if report is None:
            return False
        if metrics:
            metrics.log({"step": self.step, **{f"val_{key}": value for key, value in report.items()}})
        value = self.last_val = report[self.task.objective]
        if self.best_val is None or value < self.best_val:
            self.best_val, self.best_step, self.evals_without_improvement = value, self.step, 0
            self._save_model(self.out_dir)
            self._save_model(self.out_dir / BEST_DIR)  # where earlier versions kept it (README)
            return False
        if count_patience:
            self.evals_without_improvement += 1
        return bool(self.config.patience) and self.evals_without_improvement >= self.config.patience


def _same_kind(current: Any, saved: Any) -> bool:
    """A saved optimizer hyper-parameter the optimizer can use in place of ``current``."""
    if isinstance(current, bool) or current is None:
        return isinstance(saved, bool) or saved is None
    if isinstance(current, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
    if isinstance(current, (tuple, list)):
        return (isinstance(saved, (tuple, list)) and len(saved) == len(current)
                and all(_same_kind(a, b) for a, b in zip(current, saved)))
    return type(saved) is type(current)


def _describe_task(description: dict) -> str:
    """A task's name, with its options when it has any."""
    options = {key: value for key, value in description.items() if key != "name"}
    name = repr(description.get("name"))
    return f"{name} {json.dumps(options, sort_keys=True)}" if options else name


def _human(rate: float) -> str:
    for unit in ("", "K", "M", "G"):
        if rate < 1000:
            return f"{rate:.1f}{unit}"
        rate /= 1000
    return f"{rate:.1f}T"
