"""The training loop: AdamW, warmup + cosine, accumulation, clipping, bf16 autocast,
validation with early stopping, atomic checkpoints and exact resume, single or multi-GPU
(``torchrun``: DistributedDataParallel).

The loop trains a ``Task`` (``omnibyte.tasks``), next-byte prediction unless told otherwise,
and knows it only through the task interface: the loss, the validation sums and report, the
task's own trainable modules, and where batches come from."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from omnibyte.data import Batch, ByteCorpus
from omnibyte.devices import autocast, resolve_device
from omnibyte.errors import OmnibyteError
from omnibyte.models.base import BaseConfig, ByteModel
from omnibyte.models.serialization import load_weights, save_model
from omnibyte.tasks import NextByteTask, Task
from omnibyte.train import checkpoint
from omnibyte.train.metrics import MetricsLog, plot_loss_curve
from omnibyte.train.schedule import learning_rate

LN2 = math.log(2)


@dataclasses.dataclass
class TrainConfig(BaseConfig):
    seq_len: int = 1024
    batch_size: int = 8  # per device and micro-step
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = -1  # -1: 5% of steps, at most 1000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_windows: int = 64  # validation windows of seq_len per evaluation (0: all)
    patience: int = 0  # evaluations without improvement before stopping (0: never stop early)
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    compile: bool = False
    device: str = "auto"
    time_limit: float = 0.0  # seconds of training before stopping cleanly (0: none)
    tensorboard: bool = False

    def validate(self) -> None:
        for name in ("seq_len", "batch_size", "grad_accum", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.lr <= 0:
            raise ValueError("lr must be positive")

    @property
    def warmup(self) -> int:
        return min(1000, self.steps // 20) if self.warmup_steps < 0 else self.warmup_steps


@dataclasses.dataclass
class TrainResult:
    """Where a run ended. The ``*_bits_per_byte`` names come from next-byte training: for
    another task ``train_bits_per_byte`` is its last loss in bits and the ``val`` fields hold
    its validation ``objective``; ``val_metrics`` is the task's whole last validation report."""

    step: int
    train_bits_per_byte: float | None
    val_bits_per_byte: float | None
    best_val_bits_per_byte: float | None
    stopped_early: bool
    out_dir: Path
    val_metrics: dict[str, float] | None = None


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

    def forward(self, batch: Batch) -> torch.Tensor:
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
        self.out_dir = Path(out_dir)
        self.model = model
        self.task = task if task is not None else NextByteTask()
        self.rank, self.world_size, local_rank = _distributed_setup()
        self.device = resolve_device(config.device)
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
        if config.seq_len > model.max_seq_len:
            raise OmnibyteError(f"--seq-len {config.seq_len} exceeds the model's context of {model.max_seq_len}")
        self.loss_module = TaskLoss(model, self.task).to(self.device)  # the model and the task's modules
        self.train_corpus, self.val_corpus = train_corpus, val_corpus
        self.sampler = self.task.train_batches(train_corpus, config.seq_len, config.batch_size, config.seed)
        self.optimizer = self._make_optimizer()
        self.step = 0
        self.best_val: float | None = None
        self.evals_without_improvement = 0
        self.progress = progress and self.is_main
        self.callbacks: list[Callable[[Trainer], None]] = []  # run after every optimizer step
        self.forward_model = self._wrap_model()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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

    def _wrap_model(self) -> torch.nn.Module:
        model: torch.nn.Module = self.loss_module
        if self.config.compile:
            model = torch.compile(model)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=self.task.unused_parameters)
        return model

    # ---- checkpoints --------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {"step": self.step, "best_val": self.best_val,
                "evals_without_improvement": self.evals_without_improvement,
                "train_config": self.config.to_dict(), "world_size": self.world_size,
                "task": self.task.to_dict()}

    def save(self) -> None:
        if not self.is_main:
            return
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        checkpoint.save_trainer_state(self.out_dir, self.model, self.optimizer, self._trainer_state(), rng,
                                      task=self.task.name,
                                      task_weights=self.loss_module.task_modules.state_dict())
        self._save_model(self.out_dir)

    def _save_model(self, directory: Path) -> None:
        """The model with its task (and the task's own weights, if it has any)."""
        save_model(self.model, directory, task=self.task.to_dict(),
                   task_weights=self.loss_module.task_modules.state_dict())

    def _load_task_tensors(self, weights: dict[str, torch.Tensor]) -> None:
        try:
            self.loss_module.task_modules.load_state_dict(weights)
        except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
            detail = " ".join(str(error).split())
            raise OmnibyteError(f"task state in {self.out_dir} does not fit task {self.task.name!r}: "
                                f"{detail}") from None

    def resume(self) -> bool:
        """Restore the state in ``out_dir`` if there is one; True when resumed."""
        if not (self.out_dir / checkpoint.TRAINER_STATE_FILE).exists():
            return False
        saved = checkpoint.load_trainer_state(self.out_dir)
        document, weights, optimizer_state, rng, state = (saved.document, saved.weights, saved.optimizer,
                                                          saved.rng, saved.state)
        if document["arch"] != self.model.arch or document["config"] != self.model.config.to_dict():
            raise OmnibyteError(f"{self.out_dir} holds a different model ({document['arch']}); "
                                "use another --out or the same model options")
        saved_task = state.get("task", document["task"])  # states saved before tasks: next-byte
        if saved_task != self.task.to_dict():
            raise OmnibyteError(f"{self.out_dir} was trained for task {_describe_task(saved_task)}, not "
                                f"{_describe_task(self.task.to_dict())}; use another --out or the same task")
        load_weights(self.model, weights, self.out_dir / checkpoint.TRAINER_STATE_FILE)
        self._load_task_tensors(saved.task_weights)
        try:
            self.optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError) as error:
            raise OmnibyteError(f"optimizer state in {self.out_dir} does not fit: {error}") from None
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        self.step = int(state["step"])
        self.best_val = state.get("best_val")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        return True

    # ---- one step -----------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns mean loss (nats)."""
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, config.lr, config.warmup, config.steps, config.min_lr_ratio)
        total_loss = torch.zeros((), device=self.device)
        for micro in range(config.grad_accum):
            batch_index = (self.step * config.grad_accum + micro) * self.world_size + self.rank
            batch = self.sampler.batch(batch_index).to(self.device, non_blocking=True)
            sync = micro == config.grad_accum - 1 or self.world_size == 1
            context = self.forward_model.no_sync() if not sync else contextlib.nullcontext()
            with context, autocast(self.device):
                loss = self.forward_model(batch)
                (loss / config.grad_accum).backward()
            total_loss += loss.detach() / config.grad_accum
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.loss_module.parameters(), config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(total_loss)

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
                sums = self.task.metrics(self.model, batch)
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
    def fit(self, resume: bool = False) -> TrainResult:
        config = self.config
        if resume:
            if self.resume() and self.is_main:
                print(f"resumed from step {self.step} in {self.out_dir}")
        elif (self.out_dir / checkpoint.TRAINER_STATE_FILE).exists():
            raise OmnibyteError(f"{self.out_dir} already holds a run: pass --resume or choose another --out")
        metrics = MetricsLog(self.out_dir / "metrics.jsonl",
                             self.out_dir / "tensorboard" if config.tensorboard else None) if self.is_main else None
        if metrics:
            metrics.truncate_after(self.step)
            (self.out_dir / "train_config.json").write_text(config.to_json() + "\n")
        self.loss_module.train()
        bytes_per_step = config.batch_size * config.seq_len * config.grad_accum * self.world_size
        bar = tqdm(total=config.steps, initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True, desc="train")
        started = time.time()
        window_start, window_steps, loss_sum = time.time(), 0, 0.0
        last_loss = last_val = None
        last_report: dict[str, float] | None = None
        stopped_early = False
        try:
            while self.step < config.steps:
                loss = self.train_step()
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
                    bar.set_postfix(bpb=f"{record['bits_per_byte']:.3f}",
                                    bytes_s=_human(record["bytes_per_s"]))
                    window_start, window_steps, loss_sum = time.time(), 0, 0.0
                bar.update(1)
                if config.eval_every and (self.step % config.eval_every == 0 or self.step == config.steps):
                    last_report = self.validation_metrics()
                    last_val = None if last_report is None else last_report[self.task.objective]
                    stopped_early = self._record_validation(last_report, metrics)
                if self.step % config.save_every == 0:
                    self.save()
                for callback in self.callbacks:
                    callback(self)
                if stopped_early:
                    break
                if config.time_limit and time.time() - started > config.time_limit:
                    break
        except KeyboardInterrupt:
            bar.close()
            self.save()
            if self.is_main:
                print(f"interrupted: checkpoint saved at step {self.step}; continue with --resume")
            raise
        bar.close()
        self.save()
        if metrics:
            metrics.close()
            if (self.out_dir / "metrics.jsonl").exists():
                plot_loss_curve(self.out_dir / "metrics.jsonl", self.out_dir / "loss_curve.png")
        return TrainResult(self.step, last_loss, last_val, self.best_val, stopped_early, self.out_dir,
                           last_report)

    def _record_validation(self, report: dict[str, float] | None, metrics: MetricsLog | None) -> bool:
        """Log a validation report (each entry as ``val_<key>``: next-byte logs
        ``val_bits_per_byte``), keep the best model by the task's objective; True when
        patience ran out."""
        if report is None:
            return False
        if metrics:
            metrics.log({"step": self.step, **{f"val_{key}": value for key, value in report.items()}})
        value = report[self.task.objective]
        if self.best_val is None or value < self.best_val:
            self.best_val, self.evals_without_improvement = value, 0
            if self.is_main:
                self._save_model(self.out_dir / "best")
            return False
        self.evals_without_improvement += 1
        return bool(self.config.patience) and self.evals_without_improvement >= self.config.patience


def _distributed_setup() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world_size, int(os.environ.get("LOCAL_RANK", "0"))


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
