"""What the trainer trains: a ``Task`` turns batches into a loss and validation metrics.

The trainer knows a task only through this interface, so a new objective (a classification
head on the pooled trunk, say) plugs in without touching the training loop:

  * ``loss(model, batch)``: the scalar (nats) the trainer minimises;
  * ``metrics(model, batch)`` -> sums that add up over validation batches, and
    ``summarize(totals)`` -> the validation report, whose ``objective`` entry (lower is better)
    drives best-model saving and early stopping;
  * ``modules()``: trainable modules the task owns besides the model (a classification head);
    the trainer optimises them with the model and keeps them in its state under ``task.``;
    ``unused_parameters`` says when the loss leaves model parameters unused (for DDP);
  * ``train_batches``/``eval_batches``: how a corpus becomes batches (random next-byte windows
    by default; a task whose batches carry labels makes its own);
  * ``to_dict``/``from_dict`` and the ``TASKS`` registry: the task a run was trained for is
    recorded in its checkpoints and rebuilt from them;
  * ``read_corpus(paths, exclude)`` and ``for_data(corpus, model)``, both class methods: how
    a new run (``omnibyte train --task NAME DATA...``) reads its DATA arguments (plain files by
    default; a classifier reads class folders or a CSV of labels), and the task configured for
    training ``model`` on that corpus (a classifier learns its label set from it and sizes its
    head to the model's trunk; by default ``cls(**options)``). A resumed run rebuilds its task
    from the run with ``from_dict`` instead.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Protocol, Sequence, TypeVar

import torch
from torch import nn

from omnibyte.data.corpus import ByteCorpus
from omnibyte.data.sampler import Batch, WindowSampler, iter_eval_windows
from omnibyte.errors import OmnibyteError
from omnibyte.models.serialization import read_config, read_task_weights

if TYPE_CHECKING:
    from omnibyte.models.base import ByteModel


class BatchSource(Protocol):
    """Training batches by index. ``batch(index)`` must be a pure function of the index (and
    the source's seed): that is what makes a resumed run draw exactly the batches it would
    have drawn, and what lets every rank of a multi-GPU run draw its own."""

    def batch(self, index: int) -> Batch: ...


class Task(ABC):
    """An objective the trainer can minimise. Subclasses set ``name`` (the registry key) and
    ``objective`` and implement ``loss``, ``metrics`` and ``summarize``."""

    name: ClassVar[str] = ""
    objective: ClassVar[str] = "loss"  # key of ``summarize``'s result; lower is better
    # True when ``loss`` leaves some trainable parameter without a gradient (a classifier on the
    # pooled trunk never uses the model's byte head): multi-GPU training must then look for
    # such parameters every step, which costs time, so tasks that use everything say False.
    unused_parameters: ClassVar[bool] = False

    # ---- what the trainer calls ---------------------------------------------------------
    @abstractmethod
    def loss(self, model: ByteModel, batch: Batch) -> torch.Tensor:
        """Scalar training loss in nats, differentiable w.r.t. the model and ``modules()``."""

    @abstractmethod
    def metrics(self, model: ByteModel, batch: Batch) -> dict[str, float]:
        """Validation sums for one batch (e.g. total nats and number of targets). The trainer
        adds them up key by key over the validation batches, so they must be sums, not means."""

    @abstractmethod
    def summarize(self, totals: dict[str, float]) -> dict[str, float]:
        """The validation report from the summed ``metrics``; holds ``objective``."""

    def modules(self) -> dict[str, nn.Module]:
        """Trainable modules the task owns besides the model; names must not contain dots."""
        return {}

    def train_batches(self, corpus: ByteCorpus, seq_len: int, batch_size: int, seed: int) -> BatchSource:
        """Training batches of ``batch_size`` windows of ``seq_len`` tokens drawn from ``corpus``."""
        return WindowSampler(corpus, seq_len, batch_size, seed=seed)

    def eval_batches(self, corpus: ByteCorpus, seq_len: int, batch_size: int) -> Iterable[Batch]:
        """Validation batches in a fixed order (the trainer may stop after a prefix of them)."""
        return iter_eval_windows(corpus, seq_len, batch_size)

    # ---- how a new run gets its task and its data ----------------------------------------
    @classmethod
    def read_corpus(cls, paths: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> ByteCorpus:
        """The corpus this task trains on, from the DATA arguments of ``omnibyte train``."""
        return ByteCorpus.from_paths(paths, exclude=exclude)

    @classmethod
    def for_data(cls, corpus: ByteCorpus, model: ByteModel, **options: Any) -> Task:
        """The task configured for training ``model`` on ``corpus`` (e.g. a classifier learns
        its label set from the corpus and its head's width from the model)."""
        return cls(**options)

    # ---- recorded in checkpoints ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description; a task with options adds them next to ``name``."""
        return {"name": self.name}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Task:
        """Inverse of ``to_dict``: the options besides ``name`` are passed to the constructor."""
        options = dict(values)
        name = options.pop("name", None)
        if name != cls.name:
            raise ValueError(f"{cls.__name__} cannot be built from a {name!r} task")
        try:
            return cls(**options)
        except TypeError as error:
            raise ValueError(f"invalid options for task {cls.name!r}: {error}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"


# ---- the registry ------------------------------------------------------------------------

TASKS: dict[str, type[Task]] = {}

TaskClass = TypeVar("TaskClass", bound=type[Task])
SomeTask = TypeVar("SomeTask", bound=Task)


def register_task(task_class: TaskClass) -> TaskClass:
    """Class decorator: make ``task_class`` buildable from its ``name`` by ``task_from_dict``."""
    if not task_class.name:
        raise ValueError(f"{task_class.__name__} needs a name to be registered")
    registered = TASKS.get(task_class.name)
    if registered is not None and registered is not task_class:
        raise ValueError(f"task name {task_class.name!r} is already taken by {registered.__name__}")
    TASKS[task_class.name] = task_class
    return task_class


def task_from_dict(values: dict[str, Any]) -> Task:
    """The task ``values`` (a ``to_dict`` result) describes; ValueError names the known tasks."""
    if not isinstance(values, dict) or not isinstance(values.get("name"), str):
        raise ValueError(f"a task is described by an object with a 'name', got {values!r}")
    task_class = TASKS.get(values["name"])
    if task_class is None:
        raise ValueError(f"unknown task {values['name']!r}; known tasks: {', '.join(sorted(TASKS))}")
    return task_class.from_dict(values)


def load_task_of(directory, task_class: type[SomeTask], what: str) -> SomeTask:
    """The task of a saved model, which must be a ``task_class`` (``what`` names such a model);
    a model trained for another task is refused in one line."""
    task = load_task(directory)
    if not isinstance(task, task_class):
        raise OmnibyteError(f"{directory} is not a {what} model (it was trained for the {task.name!r} task); "
                            f"train one with omnibyte train --task {task_class.name}")
    return task


def load_task(directory) -> Task:
    """The task a saved model was trained for, with the weights of its own modules restored."""
    try:
        task = task_from_dict(read_config(directory)["task"])
    except ValueError as error:
        raise OmnibyteError(f"{directory}: {error}") from None
    modules = nn.ModuleDict(task.modules())
    weights = read_task_weights(directory)
    if weights or len(modules.state_dict()):
        try:
            modules.load_state_dict(weights)
        except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
            raise OmnibyteError(f"{directory}: task weights do not fit task {task.name!r}: "
                                f"{' '.join(str(error).split())[:200]}") from None
    return task
