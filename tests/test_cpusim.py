"""The CPU simulator against hand-computed programs (every instruction, wrap-around, HALT), its
refusal of invalid encodings, the seeded record generator and ``omnibyte datasets cpu``."""
from __future__ import annotations

import json

import pytest

from omnibyte import cpusim
from omnibyte.cli import main
from omnibyte.cpusim import InvalidProgram, assemble, run_program
from omnibyte.data.pairs import decode_records, read_pair_corpus


def state(registers: list[int], memory: dict[int, int] | None = None, fill=lambda address: address) -> bytes:
    """Registers r0..r3, then memory with m[i] = fill(i) except the addresses in ``memory``."""
    cells = [fill(address) for address in range(cpusim.MEMORY_BYTES)]
    for address, value in (memory or {}).items():
        cells[address] = value
    return bytes(registers + cells)


def test_every_instruction_on_a_hand_computed_program():
    program = assemble([
        ("MOVI", 3, 200),   # r3 = 200                            -> [10, 250, 3, 200]
        ("ADD", 1, 3),      # r1 = 250 + 200 = 450 - 256 = 194     -> [10, 194, 3, 200]
        ("SUB", 2, 3),      # r2 = 3 - 200 = -197 + 256 = 59       -> [10, 194, 59, 200]
        ("ADDI", 0, 250),   # r0 = 10 + 250 = 260 - 256 = 4        -> [4, 194, 59, 200]
        ("STORE", 5, 1),    # m[5] = r1 = 194
        ("LOAD", 2, 17),    # r2 = m[17] = 17                      -> [4, 194, 17, 200]
        ("MOV", 3, 0),      # r3 = r0 = 4                          -> [4, 194, 17, 4]
        ("LOADR", 1, 3),    # r1 = m[r3] = m[4] = 4                -> [4, 4, 17, 4]
        ("STORER", 2, 3),   # m[r2] = m[17] = r3 = 4
        ("MOVI", 0, 0xF0),  #                                      -> [240, 4, 17, 4]
        ("MOVI", 1, 0x3C),  #                                      -> [240, 60, 17, 4]
        ("MOV", 2, 0),      #                                      -> [240, 60, 240, 4]
        ("AND", 2, 1),      # r2 = 0xF0 & 0x3C = 0x30 = 48         -> [240, 60, 48, 4]
        ("MOV", 3, 0),      #                                      -> [240, 60, 48, 240]
        ("OR", 3, 1),       # r3 = 0xF0 | 0x3C = 0xFC = 252        -> [240, 60, 48, 252]
        ("XOR", 0, 1),      # r0 = 0xF0 ^ 0x3C = 0xCC = 204        -> [204, 60, 48, 252]
        ("NOT", 1),         # r1 = 255 - 60 = 195                  -> [204, 195, 48, 252]
        ("SHL", 0, 3),      # r0 = 204 * 8 = 1632 mod 256 = 96     -> [96, 195, 48, 252]
        ("SHR", 3, 5),      # r3 = 252 // 32 = 7                   -> [96, 195, 48, 7]
        ("HALT",),          # stop: the next instruction never runs
        ("MOVI", 0, 99),
    ])
    assert len(program) == 21 * cpusim.INSTRUCTION_BYTES
    assert {name for name, *_ in [line.split(" ", 1) for line in cpusim.disassemble(program)]} == set(cpusim.BY_NAME)
    final = run_program(state([10, 250, 3, 0]), program)
    assert final == state([96, 195, 48, 7], {5: 194, 17: 4})


@pytest.mark.parametrize("lines, registers, expected, expected_memory", [
    ([("ADD", 0, 1)], [255, 1, 0, 0], [0, 1, 0, 0], {}),            # 255 + 1 wraps to 0
    ([("SUB", 0, 1)], [0, 1, 0, 0], [255, 1, 0, 0], {}),            # 0 - 1 wraps to 255
    ([("ADDI", 0, 255)], [255, 0, 0, 0], [254, 0, 0, 0], {}),       # 255 + 255 = 510 wraps to 254
    ([("SHL", 0, 7)], [255, 0, 0, 0], [128, 0, 0, 0], {}),          # bits shifted out are lost
    ([("SHL", 0, 0), ("SHR", 1, 0)], [77, 88, 0, 0], [77, 88, 0, 0], {}),  # a shift by 0 changes nothing
    ([("SHR", 0, 7)], [255, 0, 0, 0], [1, 0, 0, 0], {}),            # 255 >> 7 = 1
    ([("NOT", 0)], [0, 0, 0, 0], [255, 0, 0, 0], {}),               # 255 - 0
    ([("STORER", 0, 1), ("LOADR", 2, 0)], [255, 9, 0, 0], [255, 9, 9, 0], {255: 9}),  # the last address
])
def test_wrap_around_rules(lines, registers, expected, expected_memory):
    assert run_program(state(registers), assemble(lines)) == state(expected, expected_memory)


def test_halt_stops_and_running_off_the_end_stops():
    start = state([1, 2, 3, 4])
    assert run_program(start, assemble([("HALT",), ("MOVI", 0, 9)])) == start
    assert run_program(start, assemble([("MOVI", 0, 9), ("HALT",), ("STORE", 0, 0)])) == state([9, 2, 3, 4])
    assert run_program(start, assemble([("MOVI", 0, 9)])) == state([9, 2, 3, 4])


@pytest.mark.parametrize("program, fragment", [
    (bytes([0x10, 0, 0]), "unknown opcode 0x10"),
    (bytes([0x02, 4, 0]), "operand a must be a register 0..3, got 4"),
    (bytes([0x0E, 0, 8]), "operand b must be a shift 0..7, got 8"),
    (bytes([0x0D, 1, 1]), "operand b must be 0"),
    (bytes([0x00, 0, 1]), "operand b must be 0"),
    (bytes([0x01, 0]), "multiple of 3"),
    (b"", "multiple of 3"),
])
def test_invalid_encodings_are_refused(program, fragment):
    with pytest.raises(InvalidProgram, match=fragment):
        run_program(state([0, 0, 0, 0]), program)


def test_a_state_of_the_wrong_size_is_refused():
    with pytest.raises(InvalidProgram, match="260 bytes"):
        run_program(bytes(10), assemble([("HALT",)]))
    with pytest.raises(InvalidProgram, match="unknown instruction"):
        assemble([("JUMP", 1, 2)])


def test_records_are_seeded_and_simulated():
    records = list(cpusim.generate_records(200, seed=3, min_length=2, max_length=5))
    assert records == list(cpusim.generate_records(200, seed=3, min_length=2, max_length=5))
    assert records != list(cpusim.generate_records(200, seed=4, min_length=2, max_length=5))
    assert records != list(cpusim.generate_records(200, seed=3, min_length=2, max_length=5, stream=1))
    lengths = {cpusim.program_length(source) for source, _ in records}
    assert lengths == {2, 3, 4, 5}
    halts = 0
    for source, target in records:
        initial, program = cpusim.split_source(source)
        assert target == run_program(initial, program)
        halts += any(program[i] == cpusim.HALT for i in range(0, len(program), 3))
    assert 0 < halts < 60  # about HALT_PROBABILITY of them


def test_datasets_cpu_writes_held_out_records(tmp_path, capsys):
    out = tmp_path / "cpu"
    argv = ["datasets", "cpu", "--records", "25", "--test-records", "6", "--min-length", "2", "--max-length", "4",
            "--seed", "7", "--out", str(out)]
    assert main(argv) == 0
    assert "25 training and 6 test records" in capsys.readouterr().out
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["records"] == {"train": 25, "test": 6} and manifest["seed"] == 7
    train = read_pair_corpus([str(out / "train")])
    assert train.num_documents == 25
    test_records = [record for record, _ in decode_records((out / "test" / "records-00000.pairs").read_bytes())]
    train_records = [record for record, _ in decode_records((out / "train" / "records-00000.pairs").read_bytes())]
    for record in train_records + test_records:
        assert (record.source_kind, record.target_kind) == ("cpu", "cpu-state")
        assert 2 <= cpusim.program_length(record.source) <= 4
        assert record.target == run_program(*cpusim.split_source(record.source))
    assert not {r.source for r in test_records} & {r.source for r in train_records}
    first = (out / "train" / "records-00000.pairs").read_bytes()
    assert main(argv) == 2  # not empty now: --force needed
    assert "--force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    assert (out / "train" / "records-00000.pairs").read_bytes() == first  # same seed, same records


def test_a_trace_holds_what_each_instruction_wrote_then_the_final_state():
    start = state([10, 250, 3, 0])
    program = assemble([
        ("MOVI", 3, 200),   # r3 = 200
        ("ADD", 1, 3),      # r1 = 250 + 200 wraps to 194
        ("STORE", 5, 1),    # m[5] = 194
        ("MOV", 2, 2),      # r2 = r2: a write that changes nothing is still written
        ("STORER", 0, 3),   # m[r0] = m[10] = 200
        ("LOADR", 0, 0),    # r0 = m[r0] = m[10] = 200 (the store above)
        ("HALT",),          # nothing from here on
        ("MOVI", 0, 99),
    ])
    trace = cpusim.run_trace(start, program)
    effects = [tuple(trace[i : i + cpusim.EFFECT_BYTES]) for i in range(0, 8 * cpusim.EFFECT_BYTES, cpusim.EFFECT_BYTES)]
    assert effects == [(1, 3, 200), (1, 1, 194), (2, 5, 194), (1, 2, 3), (2, 10, 200), (1, 0, 200), (0, 0, 0), (0, 0, 0)]
    assert trace[8 * cpusim.EFFECT_BYTES:] == run_program(start, program) == state([200, 194, 3, 200], {5: 194, 10: 200})
    source = start + program
    assert cpusim.final_state(source, trace) == run_program(start, program)
    assert cpusim.trace_problem(source, trace) is None
    assert "= 284 bytes, got 283" in cpusim.trace_problem(source, trace[:-1])
    assert "starts with 0 (none), 1 (register) or 2 (memory)" in cpusim.trace_problem(source, b"\x03" + trace[1:])


def test_trace_records_have_the_sources_of_plain_records():
    plain = list(cpusim.generate_records(50, seed=5, min_length=1, max_length=6))
    traced = list(cpusim.generate_records(50, seed=5, min_length=1, max_length=6, trace=True))
    assert [source for source, _ in plain] == [source for source, _ in traced]
    for (source, final), (_, trace) in zip(plain, traced):
        assert cpusim.final_state(source, trace) == final
        assert len(trace) == cpusim.program_length(source) * cpusim.EFFECT_BYTES + cpusim.STATE_BYTES


def test_datasets_cpu_trace_writes_trace_targets(tmp_path, capsys):
    out = tmp_path / "trace"
    assert main(["datasets", "cpu", "--records", "6", "--test-records", "2", "--max-length", "3", "--trace",
                 "--out", str(out)]) == 0
    assert json.loads((out / "dataset.json").read_text())["trace"] is True
    for record, _ in decode_records((out / "train" / "records-00000.pairs").read_bytes()):
        assert (record.source_kind, record.target_kind) == ("cpu", "cpu-trace")
        assert record.target == cpusim.run_trace(*cpusim.split_source(record.source))
