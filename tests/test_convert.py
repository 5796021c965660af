"""Conversion as next-byte prediction: pair files, the token layout and its loss mask, the
task in the trainer and the CLI, greedy cached decoding against a full-forward reference, and
the conversion measures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import omnibyte
from omnibyte import cpusim
from omnibyte.apps.convert import (
    byte_accuracy,
    conversion_task,
    convert_sources,
    cpu_report,
    cpu_trace_report,
    evaluate_conversion,
)
from omnibyte.cli import main
from omnibyte.data.pairs import (
    END_MARKER,
    PairRecord,
    TargetReader,
    decode_records,
    encode_records,
    escape_target,
    kind_problem,
    read_target,
    read_pair_corpus,
    record_tokens,
    records_corpus,
    target_stream,
    unescape_target,
    write_pair_dataset,
)
from omnibyte.errors import OmnibyteError
from omnibyte.models import BOS
from omnibyte.models.serialization import save_model
from omnibyte.tasks import ConvertTask, load_task
from omnibyte.tasks.convert import RecordRows
from helpers import one_thread  # noqa: F401 (fixture)

BINARY_TARGETS = [b"", b"\xff", b"\xff\xff\x00", b"MThd\x00\x00\x00\x06\xff\x2f\x00", bytes(range(256))]


@pytest.mark.parametrize("target", BINARY_TARGETS)
def test_escaped_targets_read_back_exactly_and_stop_at_the_end_marker(target):
    stream = escape_target(target)
    assert stream.endswith(END_MARKER) and stream[:-2].count(b"\xff") == 2 * target.count(b"\xff")
    assert unescape_target(stream + b"trailing bytes are never read") == (target, True)
    assert unescape_target(stream[:-1]) == (target, False)  # cut before the end marker: unfinished


def test_a_malformed_escape_ends_the_target_as_an_error():
    reader = TargetReader()
    assert [reader.feed(byte) for byte in b"ab\xff\x41"] == [False, False, False, True]
    assert bytes(reader.output) == b"ab" and reader.error and "FF 41" in reader.error
    assert unescape_target(b"ab\xff\x41") == (b"ab", False)


def test_a_fixed_size_target_is_neither_escaped_nor_marked(capsys):
    state = bytes([0xFF, 0x00] * (cpusim.STATE_BYTES // 2))
    assert target_stream(state, "cpu-state") == state
    assert read_target(state + b"\xff\x00 more", "cpu-state") == (state, True)
    assert read_target(state[:-1], "cpu-state") == (state[:-1], False)
    with pytest.raises(OmnibyteError, match="260 bytes, got 3"):
        PairRecord(bytes(cpusim.STATE_BYTES) + cpusim.assemble([("HALT",)]), b"abc", "cpu", "cpu-state")
    source = bytes(cpusim.STATE_BYTES) + cpusim.assemble([("NOT", 0)])
    batch = RecordRows([PairRecord(source, state, "cpu", "cpu-state")], 600, "training").batch([0], 1)
    assert batch.targets[0][batch.mask[0]].tolist() == list(state)
    assert int(batch.mask[0].nonzero()[0]) == len(source) + 1


def test_pair_files_hold_binary_records_back_to_back():
    records = [PairRecord(b"OBPAIR {}\n\xff", target, "bytes", "bytes", f"r{index}")
               for index, target in enumerate(BINARY_TARGETS)]
    data = encode_records(records)
    decoded = [record for record, _ in decode_records(data)]
    assert decoded == records
    with pytest.raises(OmnibyteError, match="cut short"):
        list(decode_records(data[:-1]))
    with pytest.raises(OmnibyteError, match="no OBPAIR header"):
        list(decode_records(b"hello"))
    with pytest.raises(OmnibyteError, match="source_bytes"):
        list(decode_records(b'OBPAIR {"source_bytes": -1, "target_bytes": 0}\n'))
    with pytest.raises(OmnibyteError, match="unknown source kind"):
        list(decode_records(b'OBPAIR {"source": "jpeg", "source_bytes": 1, "target_bytes": 0}\nx'))


def test_the_mask_is_exactly_the_escaped_target_and_its_end_marker(capsys):
    records = [PairRecord(b"abc", b"X\xffY"), PairRecord(b"\xff" * 7, b""), PairRecord(b"s" * 40, b"t" * 40)]
    rows = RecordRows(records, seq_len=24, role="training")
    assert "1 of 3 training records are longer than --seq-len 24" in capsys.readouterr().err
    batch = rows.batch([0, 1], batch_size=3)
    assert batch.tokens.shape == (3, 24)  # the longest row rounded up, at most seq_len
    for slot, record in enumerate(records[:2]):
        tokens, targets, mask = batch.tokens[slot], batch.targets[slot], batch.mask[slot]
        assert targets[mask].tolist() == list(escape_target(record.target))
        first = int(mask.nonzero()[0])
        assert tokens[: first + 1].tolist() == [BOS, *record.source, BOS]  # up to the separator
        assert mask[first:].sum() == mask.sum() == len(escape_target(record.target))
        full = record_tokens(record.source, record.target)
        assert tokens[: len(full) - 1].tolist() == full[:-1].tolist()
    assert not batch.mask[2].any() and (batch.targets < 256).all()


def test_the_loss_is_the_cross_entropy_of_the_target_bytes_only(one_thread):
    model = omnibyte.build_model("flat", "tiny", max_sequence_length=64, seed=0)
    task = ConvertTask()
    records = [PairRecord(b"source one", b"T1"), PairRecord(b"two", b"target\xff")]
    batch = RecordRows(records, 32, "training").batch([0, 1], 2)
    logits = model(batch.tokens)
    expected = []
    for row, record in enumerate(records):
        start = len(record.source) + 1  # the separator's position
        targets = torch.tensor(list(escape_target(record.target)))
        expected.append(F.cross_entropy(logits[row, start : start + len(targets)], targets, reduction="none"))
    manual = torch.cat(expected)
    assert torch.allclose(task.loss(model, batch), manual.mean(), atol=1e-5)
    sums = task.metrics(model, batch)
    assert sums["bytes"] == len(manual) and math.isclose(sums["bits"], float(manual.detach().sum()) / math.log(2),
                                                          rel_tol=1e-4)


def test_the_task_reads_pair_files_and_learns_its_direction(tmp_path):
    abc = PairRecord(b"X: 1\nK:G\nabc|\n", b"MThd\x00\x00\x00\x06", "abc", "midi", "tune1")
    write_pair_dataset(tmp_path / "data", {"train": [abc, PairRecord(abc.source, b"MThd", "abc", "midi", "tune2")]}, {})
    corpus = ConvertTask.read_corpus([tmp_path / "data" / "train"])
    assert corpus.num_documents == 2
    task = ConvertTask.for_data(corpus, None)
    assert (task.source, task.target) == ("abc", "midi")
    assert load_task_round_trip(task, tmp_path).to_dict() == {"name": "convert", "source": "abc", "target": "midi"}
    mixed = records_corpus([abc, PairRecord(b"MThd\x00\x00\x00\x06\x00\x01", b"x", "midi", "abc")])
    with pytest.raises(OmnibyteError, match="mixes conversion directions"):
        ConvertTask.for_data(mixed, None)
    with pytest.raises(OmnibyteError, match="holds no paired records"):
        ConvertTask().train_batches(omnibyte.data.ByteCorpus([omnibyte.data.Document("a.txt", b"plain")]), 16, 2, 0)
    with pytest.raises(OmnibyteError, match="converts abc to midi, but the task converts bytes to bytes"):
        ConvertTask().train_batches(corpus, 64, 2, 0)


def load_task_round_trip(task: ConvertTask, tmp_path) -> ConvertTask:
    model = omnibyte.build_model("flat", "tiny", max_sequence_length=64, seed=0)
    save_model(model, tmp_path / "model", task=task.to_dict())
    return load_task(tmp_path / "model")


def test_the_kind_of_input_is_checked():
    task = ConvertTask("abc", "midi")
    task.check_source(b"X: 1\nT:Tune\nK:D\nabc|\n")
    with pytest.raises(OmnibyteError, match="is MIDI .* but this model converts ABC notation to MIDI"):
        task.check_source(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x04\x00")
    with pytest.raises(OmnibyteError, match="no K: field|has a key field"):
        task.check_source(b"just some words\n")
    cpu = ConvertTask("cpu", "cpu-state")
    cpu.check_source(bytes(cpusim.STATE_BYTES) + cpusim.assemble([("HALT",)]))
    with pytest.raises(OmnibyteError, match="unknown opcode"):
        cpu.check_source(bytes(cpusim.STATE_BYTES) + b"\x77\x00\x00")


# ---- trained end to end ----------------------------------------------------------------------

CONSTANT_TARGET = b"ok\xff!"  # holds the escape byte: decoding must undo the escaping


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny model trained through the CLI to answer every word with ``CONSTANT_TARGET``."""
    root = tmp_path_factory.mktemp("convert")
    rng = np.random.default_rng(0)
    words = [bytes(rng.integers(97, 123, int(rng.integers(3, 9))).astype(np.uint8)) for _ in range(40)]
    records = [PairRecord(word, CONSTANT_TARGET, "bytes", "bytes", f"w{index}") for index, word in enumerate(words)]
    write_pair_dataset(root / "data", {"train": records[:30], "test": records[30:]}, {})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--task", "convert", str(root / "data" / "train"), "--out", str(root / "run"),
                     "--set", "max_sequence_length=64", "--seq-len", "32", "--steps", "160", "--batch-size", "16",
                     "--lr", "1e-2", "--eval-every", "20", "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return root, records[30:]


def test_convert_writes_the_target_the_model_learnt(trained_run, tmp_path, capsys):
    root, _ = trained_run
    (tmp_path / "word.txt").write_bytes(b"hello")
    assert main(["convert", "--model", str(root / "run"), str(tmp_path / "word.txt"), "-o", str(tmp_path / "out.bin"),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "out.bin").read_bytes() == CONSTANT_TARGET
    capsys.readouterr()
    # too small a budget: no end marker, nothing written, one line
    assert main(["convert", "--model", str(root / "run"), str(tmp_path / "word.txt"), "-o", str(tmp_path / "cut.bin"),
                 "--max-output", "2", "--device", "cpu"]) == 2
    assert "no end of the target within 2 bytes" in capsys.readouterr().err and not (tmp_path / "cut.bin").exists()


def test_evaluation_of_the_trained_model(trained_run, one_thread):
    """The report counts what the batched, cached greedy decoding produced, and that decoding
    gives the full forward's greedy bytes record by record; the model learnt the target."""
    root, test_records = trained_run
    model, task = omnibyte.load_model(root / "run"), conversion_task(root / "run")
    report, conversions = evaluate_conversion(model, task, test_records, batch_size=4, max_new_bytes=12)
    references = [read_target(greedy_reference(model, record.source, 12), "bytes") for record in test_records]
    assert [(conversion.output, conversion.finished) for conversion in conversions] == references
    assert report["records"] == 10 and report["finished_rate"] == report["exact_rate"] == 1.0
    assert report["target_bits_per_byte"] < 0.5 and report["target_accuracy"] == 1.0
    assert [conversion.output for conversion in conversions] == [CONSTANT_TARGET] * 10


def test_a_model_for_another_task_is_not_a_converter(tmp_path):
    model = omnibyte.build_model("flat", "tiny", max_sequence_length=64, seed=0)
    save_model(model, tmp_path / "model")
    with pytest.raises(OmnibyteError, match="not a conversion model .*'next-byte'"):
        conversion_task(tmp_path / "model")


# ---- decoding against references -------------------------------------------------------------

def greedy_reference(model, source: bytes, steps: int) -> bytes:
    """Greedy bytes from the full forward pass over the whole sequence at every step."""
    tokens = [BOS, *source, BOS]
    out = []
    with torch.no_grad():
        for _ in range(steps):
            next_byte = int(model(torch.tensor([tokens])).float()[0, -1].argmax())
            out.append(next_byte)
            tokens.append(next_byte)
    return bytes(out)


@pytest.mark.parametrize("arch, preset, overrides", [
    ("flat", "tiny", {"max_sequence_length": 64}),
    ("patch", "tiny", {}),
    ("multiscale", "tiny", {}),
])
def test_cached_greedy_decoding_equals_the_full_forward_pass(arch, preset, overrides, one_thread):
    model = omnibyte.build_model(arch, preset, seed=1, **overrides).eval()
    sources = [b"abc", b"a longer source", b"\xff\x00\xff"]
    results = convert_sources(model, sources, max_new_bytes=12, batch_size=3)
    one_by_one = [convert_sources(model, [source], max_new_bytes=12, batch_size=1)[0] for source in sources]
    assert results == one_by_one  # batched rows equal rows decoded alone
    for source, result in zip(sources, results):
        reader = TargetReader()
        for byte in greedy_reference(model, source, 12):
            if reader.feed(byte):
                break
        assert result.output == bytes(reader.output)
        assert result.finished == (reader.finished and reader.error is None)


def test_a_source_longer_than_the_context_is_reported_not_decoded(one_thread):
    model = omnibyte.build_model("flat", "tiny", max_sequence_length=64, seed=0)
    (result,) = convert_sources(model, [b"x" * 62], max_new_bytes=4)
    assert not result.finished and "does not fit" in result.error


def test_cpu_report_counts_bytes_and_states_by_program_length():
    start = bytes(cpusim.STATE_BYTES)
    records = [PairRecord(start + cpusim.assemble([("MOVI", 0, 5)] * length), b"\x05" + bytes(259), "cpu", "cpu-state")
               for length in (1, 1, 2)]
    wrong_first = b"\x06" + bytes(259)
    report = cpu_report(records, [records[0].target, wrong_first, records[2].target[:130]])
    assert report["by_length"][1] == {"records": 2, "byte_accuracy": (1 + 259 / 260) / 2, "exact_state_rate": 0.5}
    assert report["by_length"][2] == {"records": 1, "byte_accuracy": 0.5, "exact_state_rate": 0.0}
    assert math.isclose(report["byte_accuracy"], (260 + 259 + 130) / 780)
    assert report["exact_state_rate"] == 1 / 3
    assert byte_accuracy(b"abc", b"abd") == 2 / 3 and byte_accuracy(b"", b"") == 1.0
    # r0 is the only byte the program changed (0 -> 5): the second output got it wrong, the
    # third lost 130 bytes of memory that it should have copied unchanged
    parts = report["byte_accuracy_by_part"]
    assert parts["changed"] == {"bytes": 3, "byte_accuracy": 2 / 3}
    assert parts["unchanged"] == {"bytes": 3 * 259, "byte_accuracy": (259 + 259 + 129) / (3 * 259)}
    assert parts["registers"] == {"bytes": 12, "byte_accuracy": 11 / 12}
    assert parts["memory"] == {"bytes": 3 * 256, "byte_accuracy": (256 + 256 + 126) / (3 * 256)}


def test_cpu_trace_report_scores_the_final_state_where_the_format_puts_it():
    start = bytes(cpusim.STATE_BYTES)
    source = start + cpusim.assemble([("MOVI", 0, 5), ("MOVI", 1, 7)])
    target = cpusim.run_trace(start, cpusim.split_source(source)[1])
    record = PairRecord(source, target, "cpu", "cpu-trace")
    wrong_effect = bytes([1, 0, 6]) + target[3:]  # the state after it is still right
    one_effect_short = target[3:]  # the state starts 3 bytes early: read from the trace's place, it is wrong
    report = cpu_trace_report([record] * 3, [target, wrong_effect, one_effect_short])
    assert report["exact_state_rate"] == 2 / 3
    assert math.isclose(report["effect_byte_accuracy"], (6 + 5 + byte_accuracy(target[3:9], target[:6]) * 6) / 18)
    assert report["byte_accuracy"] < 1 and report["by_length"][2]["records"] == 3
    assert PairRecord(source, target, "cpu", "cpu-trace").target_kind == "cpu-trace"
    assert kind_problem("cpu-trace", target) is None and "not that" in kind_problem("cpu-trace", target[:-1])
    with pytest.raises(OmnibyteError, match="a cpu-trace target is 266 bytes, got 263"):
        PairRecord(source, target[3:], "cpu", "cpu-trace", "short")
    with pytest.raises(OmnibyteError, match="the trace of a cpu source"):
        PairRecord(b"abc", target, "bytes", "cpu-trace")


def test_a_trace_target_is_sized_by_its_program_not_escaped():
    start = bytes([0xFF]) * cpusim.STATE_BYTES  # every state byte is the escape byte
    source = start + cpusim.assemble([("MOVI", 0, 0xFF), ("NOT", 1)])
    target = cpusim.run_trace(start, cpusim.split_source(source)[1])
    assert len(target) == 2 * cpusim.EFFECT_BYTES + cpusim.STATE_BYTES
    tokens = record_tokens(source, target, "cpu-trace")
    assert len(tokens) == 1 + len(source) + 1 + len(target)  # no doubled FF, no end marker
    assert bytes(tokens[len(source) + 2 :].tolist()) == target
    assert read_target(target + b"\xff\x00 more", "cpu-trace", source) == (target, True)
    assert read_target(target[:-1], "cpu-trace", source) == (target[:-1], False)
    with pytest.raises(OmnibyteError, match="follows from its source"):
        read_target(target, "cpu-trace")


def test_a_trace_model_converts_a_program_into_a_trace_of_its_size(tmp_path, capsys, one_thread):
    """The CLI end to end on trace records: an (untrained) model's output is exactly the size the
    program's length gives, with no end marker needed; evaluation reports the final state."""
    assert main(["datasets", "cpu", "--records", "8", "--test-records", "2", "--max-length", "2", "--trace",
                 "--out", str(tmp_path / "pairs")]) == 0
    assert main(["train", "--task", "convert", str(tmp_path / "pairs" / "train"), "--out", str(tmp_path / "run"),
                 "--seq-len", "576", "--steps", "1", "--batch-size", "2", "--eval-every", "0", "--no-progress",
                 "--device", "cpu"]) == 0
    source = bytes(cpusim.STATE_BYTES) + cpusim.assemble([("MOVI", 0, 1), ("NOT", 1), ("HALT",)])
    (tmp_path / "program.bin").write_bytes(source)
    capsys.readouterr()
    assert main(["convert", "--model", str(tmp_path / "run"), str(tmp_path / "program.bin"), "-o",
                 str(tmp_path / "trace.bin"), "--device", "cpu"]) == 0
    assert len((tmp_path / "trace.bin").read_bytes()) == 3 * cpusim.EFFECT_BYTES + cpusim.STATE_BYTES
    model, task = omnibyte.load_model(tmp_path / "run"), conversion_task(tmp_path / "run")
    record = PairRecord(source, cpusim.run_trace(*cpusim.split_source(source)), "cpu", "cpu-trace")
    report, _ = evaluate_conversion(model, task, [record], batch_size=1)
    assert report["finished_rate"] == 1.0 and 0.0 <= report["byte_accuracy"] <= 1.0
    assert "effect_byte_accuracy" in report and report["by_length"][3]["records"] == 1
