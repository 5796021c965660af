"""A tiny CPU to model: its instruction set, a simulator, and (state, program, final state) records.

bGPT ("Beyond Language Models: Byte Models are Digital World Simulators") trains a byte
model to predict what a CPU does. This is omnibyte's CPU for that task; docs/tasks.md has the
same description as a table.

State (``STATE_BYTES`` = 260 bytes): registers ``r0..r3`` (one byte each) followed by 256 bytes
of memory ``m[0..255]``. Every value is an unsigned byte and all arithmetic wraps around modulo
256 (``255 + 1 == 0``, ``0 - 1 == 255``); shifts drop the bits shifted out.

Program: instructions of ``INSTRUCTION_BYTES`` = 3 bytes ``[opcode, a, b]``, run in order from
the first (there are no jumps, so every program ends). ``HALT`` stops the machine: the
instructions after it are not run. Running off the end of the program stops it too.

==========  ======  ======================  ============================================
opcode      name    operands a, b           effect
==========  ======  ======================  ============================================
0x00        HALT    0, 0                    stop
0x01        MOVI    register, byte          r[a] = b
0x02        MOV     register, register      r[a] = r[b]
0x03        LOAD    register, address       r[a] = m[b]
0x04        STORE   address, register       m[a] = r[b]
0x05        LOADR   register, register      r[a] = m[r[b]]        (address in a register)
0x06        STORER  register, register      m[r[a]] = r[b]
0x07        ADD     register, register      r[a] = (r[a] + r[b]) mod 256
0x08        SUB     register, register      r[a] = (r[a] - r[b]) mod 256
0x09        ADDI    register, byte          r[a] = (r[a] + b) mod 256
0x0A        AND     register, register      r[a] = r[a] & r[b]
0x0B        OR      register, register      r[a] = r[a] | r[b]
0x0C        XOR     register, register      r[a] = r[a] ^ r[b]
0x0D        NOT     register, 0             r[a] = 255 - r[a]
0x0E        SHL     register, count 0..7    r[a] = (r[a] << b) mod 256
0x0F        SHR     register, count 0..7    r[a] = r[a] >> b
==========  ======  ======================  ============================================

An instruction is valid only as the table encodes it: a known opcode, register operands
0..3, shift counts 0..7, and 0 where the table says 0. The simulator refuses anything else
(``InvalidProgram``), so every byte string has at most one meaning.

A record's source is the initial state followed by the program; its target is the final
state. Records come from a seed: the same seed and options give the same records.

A *trace* target (``run_trace``) holds, before the final state, one ``EFFECT_BYTES`` = 3-byte
effect per instruction of the program, in order: ``[1, register, value]`` for an instruction
that wrote a register, ``[2, address, value]`` for one that wrote memory, ``[0, 0, 0]`` for
HALT and every instruction after it. The model then writes what each instruction does before
the final state, one instruction at a time, as bGPT's CPU data does (its simulator saves the
state after every instruction); the direct target asks for the whole program's result at once.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from omnibyte.errors import OmnibyteError

NUM_REGISTERS = 4
MEMORY_BYTES = 256
STATE_BYTES = NUM_REGISTERS + MEMORY_BYTES
INSTRUCTION_BYTES = 3
MAX_PROGRAM_LENGTH = 4096  # instructions; keeps a record's size sane
HALT_PROBABILITY = 0.1  # share of generated programs with a HALT somewhere inside


class InvalidProgram(OmnibyteError, ValueError):
    """Bytes that are not a valid program (unknown opcode, operand out of range, wrong size)."""


# operand kinds: what the a and b bytes of an instruction may hold
REGISTER, BYTE, ZERO, SHIFT = "register", "byte", "zero", "shift"
OPERAND_LIMITS = {REGISTER: NUM_REGISTERS - 1, BYTE: 255, ZERO: 0, SHIFT: 7}


@dataclasses.dataclass(frozen=True)
class Operation:
    opcode: int
    name: str
    a: str  # operand kind of byte 1
    b: str  # operand kind of byte 2
    run: Callable[[np.ndarray, np.ndarray, int, int], None]  # (registers, memory, a, b), in place


def _set(registers: np.ndarray, index: int, value: int) -> None:
    registers[index] = value & 0xFF  # every result wraps around modulo 256


def _halt(registers: np.ndarray, memory: np.ndarray, a: int, b: int) -> None:
    raise AssertionError("HALT is handled by run_program")  # never called


def _store(memory: np.ndarray, address: int, value: int) -> None:
    memory[address] = value


OPERATIONS: tuple[Operation, ...] = (
    Operation(0x00, "HALT", ZERO, ZERO, _halt),
    Operation(0x01, "MOVI", REGISTER, BYTE, lambda r, m, a, b: _set(r, a, b)),
    Operation(0x02, "MOV", REGISTER, REGISTER, lambda r, m, a, b: _set(r, a, int(r[b]))),
    Operation(0x03, "LOAD", REGISTER, BYTE, lambda r, m, a, b: _set(r, a, int(m[b]))),
    Operation(0x04, "STORE", BYTE, REGISTER, lambda r, m, a, b: _store(m, a, int(r[b]))),
    Operation(0x05, "LOADR", REGISTER, REGISTER, lambda r, m, a, b: _set(r, a, int(m[int(r[b])]))),
    Operation(0x06, "STORER", REGISTER, REGISTER, lambda r, m, a, b: _store(m, int(r[a]), int(r[b]))),
    Operation(0x07, "ADD", REGISTER, REGISTER, lambda r, m, a, b: _set(r, a, int(r[a]) + int(r[b]))),
    Operation(0x08, "SUB", REGISTER, REGISTER, lambda r, m, a, b: _set(r, a, int(r[a]) - int(r[b]))),
    Operation(0x09, "ADDI", REGISTER, BYTE, lambda r, m, a, b: _set(r, a, int(r[a]) + b)),
    Operation(0x0A, "AND", REGISTER, REGISTER, lambda r, m, a, b: _set(r, a, int(r[a]) & int(r[b]))),
    Operation(0x0B, "OR", REGISTER, REGISTER, lambda r, m, a, b: _set(r, a, int(r[a]) | int(r[b]))),
    Operation(0x0C, "XOR", REGISTER, REGISTER, lambda r, m, a, b: _set(r, a, int(r[a]) ^ int(r[b]))),
    Operation(0x0D, "NOT", REGISTER, ZERO, lambda r, m, a, b: _set(r, a, 255 - int(r[a]))),
    Operation(0x0E, "SHL", REGISTER, SHIFT, lambda r, m, a, b: _set(r, a, int(r[a]) << b)),
    Operation(0x0F, "SHR", REGISTER, SHIFT, lambda r, m, a, b: _set(r, a, int(r[a]) >> b)),
)
BY_OPCODE = {operation.opcode: operation for operation in OPERATIONS}
BY_NAME = {operation.name: operation for operation in OPERATIONS}
HALT = BY_NAME["HALT"].opcode


# ---- encoding -------------------------------------------------------------------------------

def assemble(lines: list[tuple[str, int, int]] | list[tuple]) -> bytes:
    """Program bytes from ``(name, a, b)`` tuples (``("HALT",)`` and ``("NOT", 2)`` may omit
    operands that must be 0); every instruction is checked."""
    out = bytearray()
    for index, line in enumerate(lines):
        name, *operands = line
        operation = BY_NAME.get(name)
        if operation is None:
            raise InvalidProgram(f"instruction {index}: unknown instruction {name!r}")
        a, b = (list(operands) + [0, 0])[:2]
        if not (0 <= a <= 255 and 0 <= b <= 255):
            raise InvalidProgram(f"instruction {index} ({name}): operands are bytes 0..255, got {a}, {b}")
        out += bytes([operation.opcode, a, b])
        check_instruction(out[-INSTRUCTION_BYTES:], index)
    return bytes(out)


def check_instruction(instruction: bytes, index: int = 0) -> Operation:
    """The operation ``instruction`` (3 bytes) encodes; ``InvalidProgram`` when it is not valid."""
    opcode, a, b = instruction
    operation = BY_OPCODE.get(opcode)
    if operation is None:
        raise InvalidProgram(f"instruction {index}: unknown opcode 0x{opcode:02x}")
    for label, kind, value in (("a", operation.a, a), ("b", operation.b, b)):
        if value > OPERAND_LIMITS[kind]:
            allowed = "0" if kind == ZERO else f"a {kind} 0..{OPERAND_LIMITS[kind]}"
            raise InvalidProgram(f"instruction {index} ({operation.name}): operand {label} must be "
                                 f"{allowed}, got {value}")
    return operation


def check_program(program: bytes) -> None:
    """Refuse bytes that are not a whole number of valid instructions (at least one)."""
    if not program or len(program) % INSTRUCTION_BYTES:
        raise InvalidProgram(f"a program is a positive multiple of {INSTRUCTION_BYTES} bytes, "
                             f"got {len(program)}")
    if len(program) // INSTRUCTION_BYTES > MAX_PROGRAM_LENGTH:
        raise InvalidProgram(f"a program has at most {MAX_PROGRAM_LENGTH} instructions")
    for index in range(len(program) // INSTRUCTION_BYTES):
        check_instruction(program[index * INSTRUCTION_BYTES : (index + 1) * INSTRUCTION_BYTES], index)


def disassemble(program: bytes) -> list[str]:
    """One line per instruction, e.g. ``ADDI r1, 200``."""
    check_program(program)
    lines = []
    for start in range(0, len(program), INSTRUCTION_BYTES):
        opcode, a, b = program[start : start + INSTRUCTION_BYTES]
        operation = BY_OPCODE[opcode]
        operands = [f"r{value}" if kind == REGISTER else str(value)
                    for kind, value in ((operation.a, a), (operation.b, b)) if kind != ZERO]
        lines.append(f"{operation.name} {', '.join(operands)}".strip())
    return lines


# ---- running --------------------------------------------------------------------------------

def split_state(state: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(registers, memory) of a ``STATE_BYTES``-byte state, as writable uint8 copies."""
    if len(state) != STATE_BYTES:
        raise InvalidProgram(f"a CPU state is {STATE_BYTES} bytes, got {len(state)}")
    values = np.frombuffer(bytes(state), dtype=np.uint8).copy()
    return values[:NUM_REGISTERS], values[NUM_REGISTERS:]


def run_program(state: bytes, program: bytes) -> bytes:
    """The state after running ``program`` from ``state`` (both checked first)."""
    check_program(program)
    registers, memory = split_state(state)
    for start in range(0, len(program), INSTRUCTION_BYTES):
        opcode, a, b = program[start : start + INSTRUCTION_BYTES]
        if opcode == HALT:
            break
        BY_OPCODE[opcode].run(registers, memory, a, b)
    return registers.tobytes() + memory.tobytes()


EFFECT_BYTES = 3
NO_EFFECT, REGISTER_WRITE, MEMORY_WRITE = 0, 1, 2


def _effect(before: np.ndarray, after: np.ndarray, operation: Operation, a: int, b: int) -> bytes:
    """What one instruction wrote: the register or memory byte its table row names, with the
    value it holds after (written even when the value did not change)."""
    if operation.name in ("STORE", "STORER"):
        address = a if operation.name == "STORE" else int(before[a])  # STORER's address is r[a] before
        return bytes([MEMORY_WRITE, address, int(after[NUM_REGISTERS + address])])
    return bytes([REGISTER_WRITE, a, int(after[a])])


def run_trace(state: bytes, program: bytes) -> bytes:
    """The trace target of ``program`` from ``state``: one effect per instruction (see the
    module's docstring), then the final state (``run_program``'s)."""
    check_program(program)
    registers, memory = split_state(state)
    effects = bytearray()
    halted = False
    for start in range(0, len(program), INSTRUCTION_BYTES):
        opcode, a, b = program[start : start + INSTRUCTION_BYTES]
        halted = halted or opcode == HALT
        if halted:
            effects += bytes([NO_EFFECT, 0, 0])
            continue
        before = np.concatenate([registers, memory])
        BY_OPCODE[opcode].run(registers, memory, a, b)
        effects += _effect(before, np.concatenate([registers, memory]), BY_OPCODE[opcode], a, b)
    return bytes(effects) + registers.tobytes() + memory.tobytes()


def trace_problem(source: bytes, target: bytes) -> str | None:
    """Why ``target`` cannot be the trace target of ``source`` (wrong length, an effect of no
    known kind); None when its shape fits. The values are not checked: that is the model's job."""
    length = program_length(source)
    expected = length * EFFECT_BYTES + STATE_BYTES
    if len(target) != expected:
        return (f"a trace of {length} instructions is {length} x {EFFECT_BYTES} effect bytes + a "
                f"{STATE_BYTES}-byte state = {expected} bytes, got {len(target)}")
    return effects_problem(target[: length * EFFECT_BYTES])


def effects_problem(effects: bytes) -> str | None:
    """Why ``effects`` (a trace without its final state) are not whole effects of known kinds."""
    if len(effects) % EFFECT_BYTES:
        return (f"a trace holds {EFFECT_BYTES} bytes per instruction, then the state; "
                f"{len(effects)} effect bytes is not that")
    if any(kind not in (NO_EFFECT, REGISTER_WRITE, MEMORY_WRITE) for kind in effects[::EFFECT_BYTES]):
        return "a trace effect starts with 0 (none), 1 (register) or 2 (memory)"
    return None


def final_state(source: bytes, trace: bytes) -> bytes:
    """The final state inside a trace target of ``source`` (where the format puts it: after one
    effect per instruction), or what is there of it when the trace is cut short."""
    start = program_length(source) * EFFECT_BYTES
    return bytes(trace[start : start + STATE_BYTES])


def split_source(source: bytes) -> tuple[bytes, bytes]:
    """(initial state, program) of a record's source; ``InvalidProgram`` when it is neither."""
    if len(source) <= STATE_BYTES:
        raise InvalidProgram(f"a CPU record's source is a {STATE_BYTES}-byte state followed by a program, "
                             f"got {len(source)} bytes")
    state, program = source[:STATE_BYTES], source[STATE_BYTES:]
    check_program(program)
    return state, program


def program_length(source: bytes) -> int:
    """Instructions in a record's source (HALT and what follows it included)."""
    return (len(source) - STATE_BYTES) // INSTRUCTION_BYTES


# ---- generating records ---------------------------------------------------------------------

def random_operand(generator: np.random.Generator, kind: str) -> int:
    return int(generator.integers(0, OPERAND_LIMITS[kind] + 1))


def random_program(generator: np.random.Generator, length: int) -> bytes:
    """``length`` random valid instructions (no HALT), then, in ``HALT_PROBABILITY`` of the
    programs, one of them replaced by HALT: what follows it must then be ignored."""
    working = [operation for operation in OPERATIONS if operation.opcode != HALT]
    out = bytearray()
    for _ in range(length):
        operation = working[int(generator.integers(0, len(working)))]
        out += bytes([operation.opcode, random_operand(generator, operation.a),
                      random_operand(generator, operation.b)])
    if generator.random() < HALT_PROBABILITY:
        position = int(generator.integers(0, length)) * INSTRUCTION_BYTES
        out[position : position + INSTRUCTION_BYTES] = bytes([HALT, 0, 0])
    return bytes(out)


def check_lengths(min_length: int, max_length: int) -> None:
    if not 1 <= min_length <= max_length <= MAX_PROGRAM_LENGTH:
        raise OmnibyteError(f"program lengths must satisfy 1 <= min ({min_length}) <= max ({max_length}) "
                            f"<= {MAX_PROGRAM_LENGTH}")


def generate_records(count: int, seed: int, min_length: int = 1, max_length: int = 16,
                     stream: int = 0, trace: bool = False) -> Iterator[tuple[bytes, bytes]]:
    """``count`` (source, target) records: a random initial state (registers and memory
    uniform bytes) and program of a uniform length in ``[min_length, max_length]``; the
    target is the simulated final state (with ``trace``, the trace target: ``run_trace``).
    ``stream`` picks an independent sequence for the same seed (the dataset writer draws test
    records from stream 1); a seed gives the same sources with or without ``trace``."""
    check_lengths(min_length, max_length)
    if count < 0:
        raise OmnibyteError(f"record count must not be negative, got {count}")
    generator = np.random.default_rng([seed, stream])
    for _ in range(count):
        state = generator.integers(0, 256, STATE_BYTES, dtype=np.uint8).tobytes()
        program = random_program(generator, int(generator.integers(min_length, max_length + 1)))
        yield state + program, (run_trace if trace else run_program)(state, program)
