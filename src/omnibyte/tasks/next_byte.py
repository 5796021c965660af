"""Next-byte prediction: the task every omnibyte model has been trained for so far."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from omnibyte.data.sampler import Batch
from omnibyte.tasks.base import Task, register_task

if TYPE_CHECKING:
    from omnibyte.models.base import ByteModel

LN2 = math.log(2)


@register_task
class NextByteTask(Task):
    """Cross-entropy of every unmasked target byte; validated in bits per byte."""

    name: ClassVar[str] = "next-byte"
    objective: ClassVar[str] = "bits_per_byte"

    def loss(self, model: ByteModel, batch: Batch) -> torch.Tensor:
        # model.loss, not a loss computed here: families with their own training loss
        # (bGPT's patch subset, chunked multiscale loss) train through it
        return model.loss(batch.tokens, batch.targets, batch.mask)

    def metrics(self, model: ByteModel, batch: Batch) -> dict[str, float]:
        # Full logits from forward, not model.loss: every target byte is scored, whatever
        # subset a family trains on, so validation numbers compare across families.
        logits = model(batch.tokens)
        losses = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none")
        return {"bits": float((losses * batch.mask.flatten()).sum()) / LN2,
                "bytes": float(batch.mask.sum())}

    def summarize(self, totals: dict[str, float]) -> dict[str, float]:
        return {"bits_per_byte": totals.get("bits", 0.0) / max(totals.get("bytes", 0.0), 1.0)}
