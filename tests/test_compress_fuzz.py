"""Fuzzing the stream decoder (issue 9): structurally valid containers with random payloads,
headers with random field values and recomputed checksums, and bit flips and truncations of
real streams. The only allowed outcomes are the exact original or an ``OmnibyteError`` with a
one-line message: never another exception, never wrong data.

Deterministic (``derandomize``) and sized for CI: the whole file takes well under a minute on
2 cores. Set ``OMNIBYTE_FUZZ_EXAMPLES`` to run more examples per test.
"""
import dataclasses
import os
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st

from omnibyte.apps import compress as codec
from omnibyte.apps import container
from omnibyte.errors import OmnibyteError
from omnibyte.models import build_model
from helpers import one_thread, train_briefly, word_text  # noqa: F401 (one_thread is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = int(os.environ.get("OMNIBYTE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def text(size: int, seed: int) -> bytes:
    return word_text(size, seed, words_per_line=6)


@pytest.fixture(scope="module")
def model():
    """The smallest model that codes text in fewer than 8 bits/byte after a few steps, so real
    streams have coded groups (an untrained one stores every chunk raw)."""
    torch.manual_seed(0)
    model = build_model("flat", "tiny", hidden_size=16, num_layers=1, num_query_heads=2,
                        num_key_value_heads=1, max_sequence_length=64)
    return train_briefly(model, text(8000, seed=1), steps=80, window=48, lr=1e-2)


@pytest.fixture(scope="module")
def fingerprint(model):
    return codec.model_fingerprint(model)


def outcome(blob: bytes, model, fingerprint: bytes, original: list[bytes] | None) -> str:
    """'exact' or the refusal's kind; anything else fails the test."""
    try:
        members = codec.decompress_members(blob, model, fingerprint=fingerprint)
    except OmnibyteError as error:
        message = str(error)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        kind = message.split(" (")[0].split(":")[0][:40]
        _event(re.sub(r"\d[\d,]*", "N", message.split(";")[0])[:70])
        return kind
    # the stream's digest is the original's: decoding anything else would be wrong data
    assert original is not None and members == original, "wrong data returned"
    _event("exact")
    return "exact"


def _event(text: str) -> None:
    """Count outcomes in hypothesis's statistics (--hypothesis-show-statistics)."""
    try:
        event(text)
    except Exception:  # outside a hypothesis test
        pass


def real_stream(model, fingerprint, members, chunk_size, batch_size) -> bytes:
    return codec.compress_members(members, model, chunk_size=chunk_size, batch_size=batch_size,
                                  fingerprint=fingerprint)


member_lists = st.lists(  # mostly text (coded chunks), some random bytes (raw chunks)
    st.one_of(st.integers(0, 160).map(lambda n: text(n, seed=n)), st.integers(20, 160).map(lambda n: text(n, seed=n)),
              st.binary(max_size=60)),
    min_size=1, max_size=3)


def test_the_fixture_model_codes_text(model, fingerprint):
    """Otherwise the fuzz tests below would only ever see raw chunks."""
    header = container.unpack(real_stream(model, fingerprint, [text(500, seed=2)], 32, 4))
    assert not header.raw_flags().all()


# ---- structurally valid streams with random payloads ------------------------------------------

@FUZZ
@given(members=member_lists, chunk_size=st.integers(1, 64), batch_size=st.integers(1, 6), data=st.data())
def test_valid_containers_with_random_payloads(model, fingerprint, members, chunk_size, batch_size, data):
    """Everything the container checks is right (tables, lengths, checksums); the coded words, the
    raw-chunk bitmap and the raw bytes are random. The decoder must refuse or restore exactly."""
    header = container.unpack(real_stream(model, fingerprint, members, chunk_size, batch_size))
    chunks = header.num_chunks
    if data.draw(st.booleans(), label="keep bitmap"):
        raw = header.raw_flags()
    else:
        raw = np.array(data.draw(st.lists(st.booleans(), min_size=chunks, max_size=chunks), label="raw"), bool)
    lengths = container.chunk_lengths(header.member_sizes, header.settings.chunk_size)
    raw_data = data.draw(st.binary(min_size=int(lengths[raw].sum()), max_size=int(lengths[raw].sum())), label="raw data")
    streams = []
    for stream in header.streams:
        words = data.draw(st.integers(0, max(2, len(stream) // 4 + 2)), label="words")
        streams.append(data.draw(st.binary(min_size=4 * words, max_size=4 * words), label="stream"))
    fuzzed = container.pack(dataclasses.replace(
        header, streams=tuple(streams), raw_data=raw_data,
        raw_bitmap=np.packbits(raw, bitorder="little").tobytes()))
    outcome(fuzzed, model, fingerprint, members)


@FUZZ
@given(members=member_lists, chunk_size=st.integers(1, 64), batch_size=st.integers(1, 6), data=st.data())
def test_real_streams_with_one_coded_word_changed(model, fingerprint, members, chunk_size, batch_size, data):
    """The subtlest corruption: one word of a real coded stream, checksums recomputed."""
    header = container.unpack(real_stream(model, fingerprint, members, chunk_size, batch_size))
    coded = [index for index, stream in enumerate(header.streams) if stream]
    if not coded:
        return
    index = data.draw(st.sampled_from(coded), label="group")
    stream = bytearray(header.streams[index])
    word = data.draw(st.integers(0, len(stream) // 4 - 1), label="word")
    stream[4 * word : 4 * word + 4] = data.draw(st.binary(min_size=4, max_size=4), label="value")
    streams = header.streams[:index] + (bytes(stream),) + header.streams[index + 1 :]
    outcome(container.pack(dataclasses.replace(header, streams=streams)), model, fingerprint, members)


# ---- headers with random field values, checksums recomputed --------------------------------------

def build(fields: dict, payload: bytes) -> bytes:
    header = bytearray(container.MAGIC) + bytes([fields["version"]])
    header += struct.pack("<16sBBBBIIQ8s", fields["fingerprint"], fields["device"], fields["dtype"],
                          fields["precision"], fields["flags"], fields["chunk_size"], fields["batch_size"],
                          fields["original_size"], fields["digest"])
    for table in ("members", "streams"):
        header += container.varint(fields[table + "_count"]) + b"".join(map(container.varint, fields[table]))
    header += fields["bitmap"]
    header += struct.pack("<I", zlib.crc32(header))
    return bytes(header) + payload + struct.pack("<I", zlib.crc32(payload))


def interesting(limit_bits: int) -> st.SearchStrategy[int]:
    top = 2**limit_bits - 1
    return st.one_of(st.integers(0, 300), st.sampled_from([0, 1, 2, 63, 64, 65, 2**16, 2**16 + 1, 2**31, top]),
                     st.integers(0, top))


@FUZZ
@given(members=member_lists, chunk_size=st.integers(1, 64), batch_size=st.integers(1, 6), data=st.data())
def test_random_header_fields_with_recomputed_checksums(model, fingerprint, members, chunk_size, batch_size,
                                                        data):
    """Start from a real stream's fields and replace some with random values (sizes, counts,
    settings, tables, bitmap), keeping the payload; both checksums are recomputed."""
    blob = real_stream(model, fingerprint, members, chunk_size, batch_size)
    header = container.unpack(blob)
    settings = header.settings
    fields = dict(
        version=3, fingerprint=fingerprint[:16], device=0, dtype=0, precision=24, flags=int(settings.fast),
        chunk_size=settings.chunk_size, batch_size=settings.batch_size, original_size=header.original_size,
        digest=header.original_digest, members=list(header.member_sizes), members_count=len(header.member_sizes),
        streams=[len(s) for s in header.streams], streams_count=len(header.streams), bitmap=header.raw_bitmap)
    payload = b"".join(header.streams) + header.raw_data
    replacements = {
        "version": st.sampled_from([0, 1, 2, 3, 4, 255]),
        "device": st.integers(0, 255), "dtype": st.integers(0, 255), "precision": st.integers(0, 255),
        "flags": st.integers(0, 255), "chunk_size": interesting(32), "batch_size": interesting(32),
        "original_size": interesting(64),
        "members": st.lists(interesting(40), max_size=5), "members_count": interesting(62),
        "streams": st.lists(st.one_of(st.integers(0, 12).map(lambda n: 4 * n), interesting(40)), max_size=5),
        "streams_count": interesting(62),
        "bitmap": st.binary(max_size=6),
    }
    for name in data.draw(st.lists(st.sampled_from(sorted(replacements)), min_size=1, max_size=4, unique=True),
                          label="fields"):
        fields[name] = data.draw(replacements[name], label=name)
    if fields["version"] == 2:
        fields["bitmap"] = b""
    elif data.draw(st.booleans(), label="bitmap fits the chunk table") and 0 < fields["chunk_size"]:
        chunks = sum(-(-size // fields["chunk_size"]) for size in fields["members"])
        if chunks < 100_000:  # a bitmap of the right length, so the header checksum is found
            bits = np.unpackbits(np.frombuffer(fields["bitmap"], np.uint8), bitorder="little")
            bits = np.concatenate([bits, np.zeros(max(0, chunks - len(bits)), np.uint8)])[:chunks]
            fields["bitmap"] = np.packbits(bits, bitorder="little").tobytes()
    if data.draw(st.booleans(), label="payload matches the stream table"):
        payload = (payload + bytes(64))[: sum(s for s in fields["streams"] if s < 2**12)]
    outcome(build(fields, payload), model, fingerprint, members)


# ---- bit flips and truncations of real streams -------------------------------------------------------

@FUZZ
@given(members=member_lists, chunk_size=st.integers(1, 64), batch_size=st.integers(1, 6), data=st.data())
def test_bit_flips_and_truncations_of_real_streams(model, fingerprint, members, chunk_size, batch_size, data):
    blob = bytearray(real_stream(model, fingerprint, members, chunk_size, batch_size))
    header = container.unpack(bytes(blob))
    payload_size = sum(len(s) for s in header.streams) + len(header.raw_data)
    header_end = len(blob) - payload_size - 8  # where the header's checksum starts
    kind = data.draw(st.sampled_from(["flip", "flip+crc", "truncate", "extend"]), label="kind")
    if kind.startswith("flip"):
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            position = data.draw(st.integers(0, len(blob) - 1), label="position")
            blob[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        if kind == "flip+crc":  # checksums made right again: the decoder's own checks must hold
            blob[header_end : header_end + 4] = struct.pack("<I", zlib.crc32(blob[:header_end]))
            start = header_end + 4
            blob[-4:] = struct.pack("<I", zlib.crc32(blob[start:-4]))
    elif kind == "truncate":
        del blob[data.draw(st.integers(0, len(blob) - 1), label="cut"):]
    else:
        blob += data.draw(st.binary(min_size=1, max_size=8), label="tail")
    outcome(bytes(blob), model, fingerprint, members)


def test_random_payloads_reach_the_range_decoder(model, fingerprint):
    """A deterministic check that fuzzed payloads are decoded (not all refused by the container):
    some are refused by the range decoder or by the digest after running the model."""
    rng = np.random.default_rng(0)
    members = [text(300, seed=4)]
    header = container.unpack(real_stream(model, fingerprint, members, 48, 3))
    kinds = set()
    for _ in range(40):
        streams = tuple(rng.bytes(len(s)) if s else s for s in header.streams)
        kinds.add(outcome(container.pack(dataclasses.replace(header, streams=streams)), model, fingerprint, members))
    assert kinds & {"decoded data fails its checksum", "corrupted stream"}, kinds
