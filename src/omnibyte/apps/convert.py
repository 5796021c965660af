"""Converting with a model trained for the ``convert`` task, and measuring how well it converts.

Decoding is greedy (the most likely byte every step) through the shared decoder protocol: the
prompt ``BOS, source, BOS`` is prefilled, then one byte per step is fed back through the
model's KV cache (``model.decoder``) until the end marker ``FF 00`` (``omnibyte.data.pairs``;
a fixed-size target ends after its size), a malformed escape, or the byte budget. Many sources
decode together as rows of one decoder; a row's bytes depend only on its own source.

Evaluation (``evaluate_conversion``) reports, on records with known targets:

* ``target_bits_per_byte`` / ``target_accuracy``: the task's validation measures (teacher
  forcing: bits and argmax accuracy of every byte of the target stream);
* ``finished_rate``: outputs that ended (end marker or fixed size); ``exact_rate``: outputs
  equal to the target byte for byte;
* MIDI targets: ``parse_rate`` (mido reads the output); from ABC also ``note_match_rate``
  (per track, every note's pitch, start and duration equal the reference's, ``omnibyte.music``);
* ABC targets: ``parse_rate`` (abc2midi writes a MIDI file mido reads) and ``clean_rate``
  (abc2midi reports no error), with the same for the references, or None without abc2midi;
* CPU states: ``byte_accuracy`` (output byte i equals target byte i; missing bytes are wrong)
  and ``exact_rate``, overall and by program length (``by_length``); ``byte_accuracy_by_part``
  splits the bytes into registers and memory, and into those the program left as they were
  (a copy of the initial state) and those it changed (a computation), which tells a model
  that cannot copy from one that cannot compute.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from omnibyte import cpusim, music
from omnibyte.data.pairs import PairRecord, TargetReader, prompt_tokens, records_corpus
from omnibyte.devices import autocast
from omnibyte.errors import OmnibyteError
from omnibyte.models.base import ByteModel
from omnibyte.tasks import ConvertTask, Task, load_task_of

CHECK_EVERY = 32  # decode steps between reads of the new bytes on the host (each read is a sync)


def conversion_task(directory: str | Path) -> ConvertTask:
    """The conversion task a saved model was trained for; any other model is refused in one line."""
    return load_task_of(directory, ConvertTask, "conversion")


@dataclasses.dataclass
class Conversion:
    """A decoded target: ``finished`` when it ended (its end marker, or its fixed size, was
    reached); ``error`` says why not."""

    output: bytes
    finished: bool
    error: str | None = None


def convert_sources(model: ByteModel, sources: Sequence[bytes], max_new_bytes: int | None = None,
                    batch_size: int = 16, fast: bool = False, target_kind: str = "bytes") -> list[Conversion]:
    """Greedy conversions of ``sources`` to targets of ``target_kind``, ``batch_size`` rows at a
    time (sources of similar length together). ``max_new_bytes`` bounds each output (escape
    bytes and end marker included; default: what the model's context leaves after the source)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_new_bytes is not None and max_new_bytes < 1:
        raise ValueError(f"max_new_bytes must be positive, got {max_new_bytes}")
    results: list[Conversion | None] = [None] * len(sources)
    fitting = []
    for index, source in enumerate(sources):
        if len(source) + 3 > model.max_seq_len:  # the prompt and at least one byte
            results[index] = Conversion(b"", False, f"the source ({len(source)} bytes) does not fit in the "
                                                     f"model's context of {model.max_seq_len} tokens")
        else:
            fitting.append(index)
    fitting.sort(key=lambda index: len(sources[index]))
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(fitting), batch_size):
            chunk = fitting[first : first + batch_size]
            converted = _convert_rows(model, [sources[i] for i in chunk], max_new_bytes, fast, target_kind)
            for index, result in zip(chunk, converted):
                results[index] = result
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


@torch.no_grad()
def _convert_rows(model: ByteModel, sources: list[bytes], max_new_bytes: int | None, fast: bool,
                  target_kind: str) -> list[Conversion]:
    """One decoder, one row per source; stops when every row is done or the budget is spent."""
    prompts = [prompt_tokens(source) for source in sources]
    longest = max(len(prompt) for prompt in prompts)
    budget = model.max_seq_len - longest
    if max_new_bytes is not None:
        budget = min(budget, max_new_bytes)
    device = model.device
    rows = np.zeros((len(prompts), longest), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        rows[row, : len(prompt)] = prompt
    decoder = model.decoder(len(prompts), longest + budget, fast=fast)
    logits = decoder.prefill(torch.from_numpy(rows).to(device), [len(prompt) for prompt in prompts])
    readers = [TargetReader(target_kind, source) for source in sources]
    pending: list[torch.Tensor] = []
    for step in range(budget):
        next_bytes = logits.argmax(dim=-1)
        pending.append(next_bytes)
        if len(pending) == CHECK_EVERY or step == budget - 1:
            block = torch.stack(pending, dim=1).cpu().numpy()
            pending = []
            for reader, predicted in zip(readers, block):
                for byte in predicted.tolist():
                    if reader.feed(byte):
                        break
            if all(reader.finished for reader in readers):
                break
        if step + 1 < budget:
            logits = decoder.step(next_bytes)
    return [Conversion(bytes(reader.output), reader.finished and reader.error is None,
                       reader.error or (None if reader.finished else f"no end of the target within {budget} bytes"))
            for reader in readers]


def convert(model: ByteModel, task: ConvertTask, source: bytes, max_new_bytes: int | None = None,
            fast: bool = False, name: str = "input") -> bytes:
    """The target ``source`` converts to; refuses a source of the wrong kind and an output
    that never ended (one line each)."""
    task.check_source(source, name)
    (result,) = convert_sources(model, [source], max_new_bytes, batch_size=1, fast=fast, target_kind=task.target)
    if not result.finished:
        raise OmnibyteError(f"conversion of {name} failed: {result.error}; nothing written")
    return result.output


# ---- evaluation --------------------------------------------------------------------------------

@torch.no_grad()
def target_scores(model: ByteModel, task: Task, records: Sequence[PairRecord], seq_len: int | None = None,
                  batch_size: int = 8) -> dict[str, float]:
    """The task's validation report (bits per target byte, accuracy) on ``records``, teacher
    forced, and ``bytes_scored``; records longer than ``seq_len`` (default: the model's
    context) are left out."""
    seq_len = seq_len or model.max_seq_len
    totals: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in task.eval_batches(records_corpus(records), seq_len, batch_size):
            with autocast(model.device):
                sums = task.metrics(model, batch.to(model.device))
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
    finally:
        model.train(was_training)
    return {**task.summarize(totals), "bytes_scored": totals.get("bytes", 0.0)}


def byte_accuracy(output: bytes, target: bytes) -> float:
    """Share of target bytes that the output has at the same position (missing ones are wrong)."""
    if not target:
        return float(output == target)
    matches = sum(a == b for a, b in zip(output, target))
    return matches / len(target)


def share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def cpu_report(records: Sequence[PairRecord], outputs: Sequence[bytes]) -> dict[str, Any]:
    """Per-byte and exact-state accuracy, overall and by program length."""
    by_length: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for record, output in zip(records, outputs):
        by_length[cpusim.program_length(record.source)].append(
            (byte_accuracy(output, record.target), output == record.target))
    scores = [score for group in by_length.values() for score in group]
    total_bytes = sum(len(record.target) for record in records)
    right_bytes = sum(byte_accuracy(output, record.target) * len(record.target)
                      for record, output in zip(records, outputs))
    return {
        "byte_accuracy": right_bytes / max(total_bytes, 1),
        "byte_accuracy_by_part": cpu_accuracy_by_part(records, outputs),
        "exact_state_rate": share([exact for _, exact in scores]),
        "by_length": {length: {"records": len(group),
                               "byte_accuracy": sum(accuracy for accuracy, _ in group) / len(group),
                               "exact_state_rate": share([exact for _, exact in group])}
                      for length, group in sorted(by_length.items())},
    }


def cpu_trace_report(records: Sequence[PairRecord], outputs: Sequence[bytes]) -> dict[str, Any]:
    """``cpu_report`` of the final states the traces end with (read where the format puts them:
    a trace of the wrong length misplaces its state, and that counts against it), and the
    per-byte accuracy of the effects before them."""
    finals = [dataclasses.replace(record, target=cpusim.final_state(record.source, record.target),
                                  target_kind="cpu-state") for record in records]
    predicted = [cpusim.final_state(record.source, output) for record, output in zip(records, outputs)]
    effect_bytes = [len(record.target) - cpusim.STATE_BYTES for record in records]
    right = sum(byte_accuracy(output[:size], record.target[:size]) * size
                for record, output, size in zip(records, outputs, effect_bytes))
    return {**cpu_report(finals, predicted),
            "effect_byte_accuracy": right / sum(effect_bytes) if sum(effect_bytes) else None}


def cpu_accuracy_by_part(records: Sequence[PairRecord], outputs: Sequence[bytes]) -> dict[str, dict[str, Any]]:
    """Per-byte accuracy of the final state's registers and memory, and of the bytes the program
    left unchanged and those it changed: for each part, its byte count and the share right."""
    right: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    for record, output in zip(records, outputs):
        initial = np.frombuffer(record.source[: cpusim.STATE_BYTES], dtype=np.uint8)
        target = np.frombuffer(record.target, dtype=np.uint8)
        got = np.full(len(target), -1, dtype=np.int16)  # missing bytes match nothing
        got[: min(len(output), len(target))] = np.frombuffer(output[: len(target)], dtype=np.uint8)
        correct = got == target
        is_register = np.arange(len(target)) < cpusim.NUM_REGISTERS
        changed = target != initial[: len(target)]
        for part, mask in (("registers", is_register), ("memory", ~is_register),
                           ("unchanged", ~changed), ("changed", changed)):
            count[part] += int(mask.sum())
            right[part] += int(correct[mask].sum())
    return {part: {"bytes": count[part], "byte_accuracy": right[part] / count[part] if count[part] else None}
            for part in ("registers", "memory", "unchanged", "changed")}


def abc_report(records: Sequence[PairRecord], outputs: Sequence[bytes], abc2midi: str | None) -> dict[str, Any]:
    """abc2midi's verdict on the outputs and, for comparison, on the references."""
    references = [music.check_abc(record.target, abc2midi) for record in records]
    if not records or None in references:  # abc2midi missing, or it cannot run here
        return {"parse_rate": None, "clean_rate": None, "reference_parse_rate": None,
                "reference_clean_rate": None, "abc2midi": "missing"}
    checks = [music.check_abc(output, abc2midi) for output in outputs]
    return {"parse_rate": share([check.parses for check in checks]),
            "clean_rate": share([check.clean for check in checks]),
            "reference_parse_rate": share([check.parses for check in references]),
            "reference_clean_rate": share([check.clean for check in references])}


def evaluate_conversion(model: ByteModel, task: ConvertTask, records: Sequence[PairRecord], *,
                        max_new_bytes: int | None = None, batch_size: int = 16, fast: bool = False,
                        abc2midi: str | None = None) -> tuple[dict[str, Any], list[Conversion]]:
    """The measures above on ``records`` (all of ``task``'s direction), and the conversions."""
    task.checked(list(records))
    report: dict[str, Any] = {"records": len(records), "direction": f"{task.source}->{task.target}"}
    scores = target_scores(model, task, records, batch_size=batch_size)
    scored = scores.get("bytes_scored", 0) > 0  # None, not 0, when no record fits the context
    report["target_bits_per_byte"] = scores["bits_per_byte"] if scored else None
    report["target_accuracy"] = scores["accuracy"] if scored else None
    conversions = convert_sources(model, [record.source for record in records], max_new_bytes, batch_size, fast,
                                  task.target)
    outputs = [conversion.output for conversion in conversions]
    report["finished_rate"] = share([conversion.finished for conversion in conversions])
    report["exact_rate"] = share([conversion.finished and conversion.output == record.target
                                  for conversion, record in zip(conversions, records)])
    if task.target == "midi":
        report["parse_rate"] = share([music.midi_parses(output) for output in outputs])
        if task.source == "abc":
            report["note_match_rate"] = share([music.same_notes(output, record.target)
                                               for output, record in zip(outputs, records)])
    elif task.target == "abc":
        report.update(abc_report(records, outputs, abc2midi))
    elif task.target == "cpu-state":
        report.update(cpu_report(records, outputs))
    elif task.target == "cpu-trace":
        report.update(cpu_trace_report(records, outputs))
    return report, conversions
