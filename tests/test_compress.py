"""omnibyte compress/decompress: exact round trips, bounded expansion (raw chunks), the
container's checks (crafted headers, decoder failures, modes the encoder never produces), the CLI."""
import dataclasses
import gzip
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from omnibyte.apps import compress as codec
from omnibyte.apps import container
from omnibyte.cli import main
from omnibyte.errors import OmnibyteError
from omnibyte.models import ARCHITECTURES, build_model
from omnibyte.scoring import score_bytes
from omnibyte.models.serialization import save_model
from helpers import one_thread, train_briefly, word_text  # noqa: F401 (one_thread is a fixture)

DATA = Path(os.environ.get("OMNIBYTE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CHUNK = 32
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch: str = "flat", seed: int = 0, sharpen: float = 1.0):
    torch.manual_seed(seed)
    model = build_model(arch, "tiny").eval()
    if sharpen != 1.0:  # peaked predictions, so coding costs differ clearly from 8 bits/byte
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.startswith("head"):
                    param.mul_(sharpen)
    return model


@pytest.fixture(scope="module")
def model():
    return tiny(sharpen=30.0)


def text(size: int, seed: int = 0) -> bytes:
    return word_text(size, seed)


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(0)
    return train_briefly(build_model("flat", "tiny"), text(20_000, seed=1))


def roundtrip(model, data: bytes, **options) -> bytes:
    blob = codec.compress(data, model, **options)
    assert codec.decompress(blob, model) == data
    return blob


# ---- round trips --------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\xff", bytes(range(256)), bytes(range(256))[::-1] * 2, b"\x00" * 300, b"ab" * 150,
], ids=["empty", "zero", "ff", "all-256", "all-256-reversed", "run", "alternating"])
def test_roundtrip_edge_cases(model, data):
    roundtrip(model, data, chunk_size=CHUNK, batch_size=4)


@pytest.mark.parametrize("size", [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1, 5 * CHUNK - 1])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_roundtrip_sizes_around_chunk_boundaries(model, size, batch_size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    roundtrip(model, data, chunk_size=CHUNK, batch_size=batch_size)


@FAST
@given(data=st.binary(max_size=200), chunk_size=st.sampled_from([1, 7, CHUNK]), batch_size=st.integers(1, 9))
def test_roundtrip_property(model, data, chunk_size, batch_size):
    roundtrip(model, data, chunk_size=chunk_size, batch_size=batch_size)


@FAST
@given(members=st.lists(st.binary(max_size=80), max_size=6), batch_size=st.integers(1, 5))
def test_members_roundtrip_property(model, members, batch_size):
    blob = codec.compress_members(members, model, chunk_size=16, batch_size=batch_size)
    assert codec.decompress_members(blob, model) == members


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_roundtrip_every_family(arch):
    model = tiny(arch)
    data = b"The quick brown fox jumps over the lazy dog. " * 4 + bytes(range(0, 256, 3))
    for chunk_size in (1, 33, min(300, model.max_seq_len)):
        roundtrip(model, data, chunk_size=chunk_size, batch_size=3)


def real_samples() -> dict[str, bytes]:
    """A 1 KB prefix of one file of every kind in the shared data, raw and decoded."""
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    import tarfile

    paths = sorted((DATA / "format-samples").rglob("*.*"))
    paths = [p for p in paths if p.suffix not in (".tsv",) and p.is_file()]
    paths += [DATA / "fsdd" / "recordings" / "7_jackson_32.wav", DATA / "nottingham" / "ABC_cleaned" / "jigs.abc",
              DATA / "nottingham" / "MIDI" / "jigs1.mid", DATA / "text" / "gcide.txt.gz",
              DATA / "code" / "linux-6.1-core.tar.xz", DATA / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"]
    samples = {str(p.relative_to(DATA)): p.read_bytes()[:1024] for p in paths if p.is_file()}
    with gzip.open(DATA / "text" / "gcide.txt.gz") as file:
        samples["gcide text"] = file.read(1024)
    with tarfile.open(DATA / "code" / "linux-6.1-core.tar.xz", "r:xz") as archive:
        member = next(m for m in archive if m.isfile() and m.name.endswith(".c"))
        samples["linux " + member.name] = archive.extractfile(member).read(1024)
    with gzip.open(DATA / "fashion-mnist" / "t10k-images-idx3-ubyte.gz") as file:
        samples["fashion-mnist pixels"] = file.read(16 + 784)[16:]
    return samples


@pytest.mark.slow
def test_roundtrip_real_files_of_every_kind(model):
    samples = real_samples()
    assert len(samples) > 30
    members = list(samples.values())
    blob = codec.compress_members(members, model, chunk_size=256, batch_size=64)
    restored = codec.decompress_members(blob, model)
    for name, original, decoded in zip(samples, members, restored):
        assert decoded == original, name
    wav = samples["fsdd/recordings/7_jackson_32.wav"]  # one on its own, other batch shape
    roundtrip(model, wav, chunk_size=100, batch_size=5)


def test_compressed_size_matches_model_cross_entropy(text_model):
    data = text(3000, seed=5)
    chunk_size = 256
    blob = roundtrip(text_model, data, chunk_size=chunk_size, batch_size=4)
    header = container.unpack(blob)
    assert not header.raw_flags().any() and header.raw_data == b""  # model-friendly: every chunk coded
    payload_bits = 8 * sum(len(s) for s in header.streams)
    model_bits = sum(-score_bytes(text_model, data[i : i + chunk_size]).log2_probs.sum()
                     for i in range(0, len(data), chunk_size))
    assert model_bits / len(data) < 3  # the size follows the model, not a uniform guess
    # range coding costs at most a few words per stream beyond the model's bits
    assert model_bits - 8 < payload_bits < model_bits + 64 * len(header.streams) + 0.002 * model_bits
    # header + trailer + one bit per chunk
    assert len(blob) - sum(len(s) for s in header.streams) < 80
    assert len(data) / len(blob) > 3


@pytest.mark.parametrize("on_device", [False, True])
def test_progress_reports_the_coded_bits(text_model, monkeypatch, on_device):
    """The stepped encoder keeps its intervals (and the bits it reports) on the device on a GPU
    (forced here on the CPU) and in host arrays on the CPU: the same stream either way, and the
    bits reported after the last byte are its size to within the range coder's words."""
    data = text(1500, seed=6)
    plain = codec.compress(data, text_model, chunk_size=256, batch_size=3)
    monkeypatch.setattr(codec._StepIntervals, "BITS_EVERY", 1)
    monkeypatch.setattr(codec._StepIntervals, "KEEP_ON_DEVICE", on_device)
    reported = []
    blob = codec.compress(data, text_model, chunk_size=256, batch_size=3,
                          progress=lambda count, bits: reported.append((count, bits)))
    assert blob == plain
    header = container.unpack(blob)
    assert sum(count for count, _ in reported) == len(data)
    bits = [value for _, value in reported]
    assert bits == sorted(bits)
    payload_bits = 8 * sum(len(stream) for stream in header.streams)
    assert payload_bits - 64 * len(header.streams) <= bits[-1] <= payload_bits + 8
    assert codec.decompress(blob, text_model) == data


def test_quantized_frequencies_are_exact_and_leave_no_byte_at_zero():
    logits = torch.randn(64, 256) * torch.tensor([0.1, 5.0, 50.0, 500.0]).repeat(16).unsqueeze(1)
    weights = codec.quantized_frequencies(logits)
    total = 2**codec.PRECISION - 256
    assert torch.equal(weights, weights.floor()) and (weights >= 0).all()
    assert (weights.double().sum(-1) == total).all()
    probs = torch.softmax(logits.double(), -1)
    coded = (weights.double() + 1) / 2**codec.PRECISION
    assert ((coded - probs).abs() <= 300 / 2**codec.PRECISION).all()


# ---- bounded expansion: raw chunks ---------------------------------------------------

def documented_bound(size: int, chunk_size: int, batch_size: int) -> int:
    """docs/compression.md: one member of n < 2**35 bytes grows by at most
    68 bytes + 5 bytes per group + 1 bit per chunk."""
    chunks = -(-size // chunk_size)
    groups = -(-chunks // max(1, min(batch_size, chunks))) if chunks else 0
    return size + 68 + 5 * groups + -(-chunks // 8)


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 257, 1500])
@pytest.mark.parametrize("chunk_size, batch_size", [(32, 4), (100, 64), (512, 2)])
def test_random_bytes_grow_by_at_most_the_documented_bound(text_model, size, chunk_size, batch_size):
    data = np.random.default_rng(size + chunk_size).bytes(size)  # what no model can compress
    blob = roundtrip(text_model, data, chunk_size=chunk_size, batch_size=batch_size)
    assert len(blob) <= codec.max_compressed_size([size], chunk_size, batch_size)
    assert len(blob) <= documented_bound(size, chunk_size, batch_size)
    header = container.unpack(blob)
    assert header.raw_flags().all() and header.raw_data == data and not any(header.streams)


@pytest.mark.parametrize("size", [1, 70, 300])
def test_batches_of_one_row_never_expand_either(text_model, size):
    data = np.random.default_rng(size).bytes(size)
    blob = roundtrip(text_model, data, chunk_size=32, batch_size=1)
    assert len(blob) <= documented_bound(size, 32, 1)


def test_an_untrained_model_never_expands_either(model):
    """The sharpened random model codes most bytes at far more than 8 bits: all raw."""
    data = text(2000)
    blob = roundtrip(model, data, chunk_size=CHUNK, batch_size=8)
    assert len(blob) <= documented_bound(len(data), CHUNK, 8)


def test_bound_holds_for_several_members(text_model):
    members = [np.random.default_rng(i).bytes(size) for i, size in enumerate([0, 5, 300, 64, 1])]
    blob = codec.compress_members(members, text_model, chunk_size=64, batch_size=3)
    assert codec.decompress_members(blob, text_model) == members
    assert len(blob) <= codec.max_compressed_size([len(m) for m in members], 64, 3)


def test_mixed_raw_and_coded_chunks_in_one_group_round_trip(text_model):
    chunk = 128
    noise = np.random.default_rng(7).bytes(10 * chunk)
    friendly = text(10 * chunk, seed=9)
    # alternating chunks, a last short text chunk: raw rows longer than the last coded row
    data = b"".join(friendly[i * chunk : (i + 1) * chunk] + noise[i * chunk : (i + 1) * chunk] for i in range(5))
    data += friendly[-40:]
    for batch_size in (3, 16):  # 16: every chunk in one group
        blob = roundtrip(text_model, data, chunk_size=chunk, batch_size=batch_size)
        header = container.unpack(blob)
        assert header.raw_flags().tolist() == [False, True] * 5 + [False]
        assert header.raw_data == b"".join(noise[i * chunk : (i + 1) * chunk] for i in range(5))
        assert len(blob) < 0.7 * len(data)  # the text chunks still compress
    members = [friendly[:300], noise[:200], b"", friendly[300:333] + noise[:50]]
    blob = codec.compress_members(members, text_model, chunk_size=64, batch_size=5)
    assert codec.decompress_members(blob, text_model) == members
    assert 0 < container.unpack(blob).raw_flags().sum() < container.unpack(blob).num_chunks


def test_all_raw_streams_decode_without_running_the_model(text_model, monkeypatch):
    data = np.random.default_rng(0).bytes(500)
    blob = codec.compress(data, text_model, chunk_size=64, batch_size=4)

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran for raw chunks")

    monkeypatch.setattr(text_model, "decoder", no_model)
    assert codec.decompress(blob, text_model) == data


def test_interval_coding_writes_what_frequency_coding_writes():
    """The encoder codes each byte with its own (left, frequency) interval; the decoder uses
    the full 256-byte frequencies. Both must give the same bits."""
    import constriction

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3000, 256, generator=generator) * torch.tensor([0.01, 1.0, 20.0, 1000.0]).repeat(750)[:, None]
    weights = codec.quantized_frequencies(logits)
    symbols = torch.randint(0, 256, (3000,), generator=generator)
    symbols[::3] = weights[::3].argmax(-1)
    symbols[1::11], symbols[2::13] = 0, 255
    left, frequency = codec._intervals(weights, symbols)
    stream = codec._encode(left.numpy(), frequency.numpy())
    direct = constriction.stream.queue.RangeEncoder()
    direct.encode(symbols.numpy().astype(np.int32), codec._family(), weights.numpy())
    assert stream == direct.get_compressed().astype("<u4").tobytes()
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(stream, "<u4").astype(np.uint32))
    assert np.array_equal(decoder.decode(codec._family(), weights.numpy()), symbols.numpy())


# ---- version 2 streams (omnibyte 0.2.0) -----------------------------------------------------

V2_FIXTURE = Path(__file__).parent / "fixtures" / "v0.2" / "flat-members.omb"  # written by 0.2.0 (d136b21)


def test_a_version_2_stream_still_decodes():
    from omnibyte.models.serialization import load_model

    model = load_model(Path(__file__).parent / "fixtures" / "v0.1" / "flat")
    blob = V2_FIXTURE.read_bytes()
    header = container.unpack(blob)
    assert header.version == 2 and not header.raw_flags().any()
    assert codec.decompress_members(blob, model) == [
        b"The quick brown fox jumps over the lazy dog. " * 3, bytes(range(0, 256, 5)), b""]
    damaged = bytearray(blob)
    damaged[-9] ^= 1
    with pytest.raises(OmnibyteError, match="payload checksum"):
        codec.decompress_members(bytes(damaged), model)


def test_new_streams_are_version_4(blob):
    assert blob[4] == container.VERSION == 4


# ---- rejected streams -------------------------------------------------------------

@pytest.fixture(scope="module")
def blob(model):
    return codec.compress(b"hello omnibyte " * 10, model, chunk_size=CHUNK, batch_size=2)


def repack(blob: bytes, **changes) -> bytes:
    import dataclasses

    return container.pack(dataclasses.replace(container.unpack(blob), **changes))


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b"", "magic"),
    (lambda b: b"PK\x03\x04" + b[4:], "magic"),
    (lambda b: b[:4] + b"\x07" + b[5:], "version 7"),
    (lambda b: b[:30], "truncated"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b + b"\x00", "trailing"),
    (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], "header checksum"),
    (lambda b: b[:-10] + bytes([b[-10] ^ 0x40]) + b[-9:], "payload checksum"),
])
def test_damaged_streams_are_rejected(model, blob, mangle, message):
    with pytest.raises(OmnibyteError, match=message):
        codec.decompress(mangle(blob), model)


def varint(value: int) -> bytes:
    return container.varint(value)


def craft(*, version=3, fingerprint=bytes(16), device=0, dtype=0, precision=24, flags=0, chunk_size=32,
          batch_size=1, original_size=None, digest=bytes(8), members=(10,), streams=(bytes(4),),
          member_count=None, stream_count=None, stream_sizes=None, bitmap=None, payload=None) -> bytes:
    """A container with any field values, written field by field (not through ``container.pack``)
    and with both checksums recomputed, as a hostile file would be."""
    header = bytearray(container.MAGIC) + bytes([version])
    original = sum(members) if original_size is None else original_size
    header += struct.pack("<16sBBBBIIQ8s", fingerprint, device, dtype, precision, flags, chunk_size,
                          batch_size, original, digest)
    header += varint(len(members) if member_count is None else member_count) + b"".join(map(varint, members))
    sizes = [len(stream) for stream in streams] if stream_sizes is None else stream_sizes
    header += varint(len(sizes) if stream_count is None else stream_count) + b"".join(map(varint, sizes))
    if version >= 3:
        chunks = sum(-(-m // chunk_size) for m in members) if chunk_size else 0
        header += bytes(-(-chunks // 8)) if bitmap is None else bitmap
    header += struct.pack("<I", zlib.crc32(header))
    payload = b"".join(streams) if payload is None else payload
    return bytes(header) + payload + struct.pack("<I", zlib.crc32(payload))


HUGE = 2**62


@pytest.mark.parametrize("fields, message", [
    (dict(batch_size=2**32 - 1), "batch_size = 4,294,967,295"),
    (dict(batch_size=2**16 + 1), "batch_size = 65,537"),
    (dict(members=(40,), batch_size=3), "batch_size = 3 exceeds the 2 chunks"),
    (dict(members=(), member_count=HUGE), "member table lists"),
    (dict(stream_count=HUGE, streams=()), "stream table lists"),
    (dict(stream_sizes=[HUGE], streams=(), payload=bytes(4)), "header promises"),
    (dict(members=(HUGE,), chunk_size=1, bitmap=b""), "header ends early"),  # a bitmap of 2**62 bits
    (dict(members=(HUGE,), chunk_size=2**32 - 1, bitmap=b""), "header ends early"),
    (dict(members=(2**40,), chunk_size=2**32 - 1, batch_size=257), "claims 1,099,511,627,776 coded bytes"),
    (dict(members=(2**20,) * 40, chunk_size=2**20, batch_size=40), "coded streams hold at most"),
    (dict(original_size=11), "original_size = 11"),
    (dict(members=(10, 30), streams=(bytes(4),)), "disagree"),
    (dict(streams=(bytes(3),)), "32-bit words"),
    (dict(bitmap=b"\x02"), "past the last chunk"),
    (dict(bitmap=b"\x01", streams=(b"",), payload=bytes(5)), "truncated"),  # a raw chunk that is not there
    (dict(chunk_size=0), "chunk_size = 0"),
    (dict(precision=20), "precision = 20"),
    (dict(precision=255), "precision = 255"),
    (dict(dtype=2), "dtype = float16 on device cpu"),
    (dict(dtype=1), "dtype = bfloat16 on device cpu"),
    (dict(dtype=9), "dtype = 9"),
    (dict(device=5), "device = 5"),
    (dict(flags=0x80), "flags = 0x80"),
    (dict(flags=0x03), "unknown bits 0x02"),
    (dict(version=5), "version 5"),
    (dict(version=1), "version 1 was made by omnibyte 0.1"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_crafted_headers_are_refused_at_once(model, fields, message, monkeypatch):
    blob = craft(fingerprint=codec.model_fingerprint(model)[:16], **fields)
    monkeypatch.setattr(model, "decoder", lambda *a, **k: pytest.fail("the model ran"))
    for parse in (container.unpack, lambda b: codec.decompress(b, model)):
        start = time.perf_counter()
        with pytest.raises(OmnibyteError, match=message) as caught:
            parse(blob)
        assert time.perf_counter() - start < 1.0
        assert "\n" not in str(caught.value)


def test_a_crafted_header_is_about_65_bytes():
    blob = craft(batch_size=2**32 - 1)
    assert len(blob) <= 66
    with pytest.raises(OmnibyteError, match="batch_size"):
        container.unpack(blob)


def test_group_checks_need_no_model_step(model, monkeypatch):
    """Streams that pass the container's totals but not the per-group rules."""
    fingerprint = codec.model_fingerprint(model)[:16]
    monkeypatch.setattr(model, "decoder", lambda *a, **k: pytest.fail("the model ran"))
    # every chunk raw, yet a coded stream
    raw_with_stream = craft(fingerprint=fingerprint, members=(10,), streams=(bytes(4),), bitmap=b"\x01",
                            payload=bytes(4) + b"0123456789")
    with pytest.raises(OmnibyteError, match="stores every chunk raw but has a coded stream"):
        codec.decompress(raw_with_stream, model)
    # group 0 holds 8,192 chunks of 1,024 coded bytes in 4 bytes; group 1's long stream pays for it
    # in the container's total, not in its own group
    rows, chunk = 8192, model.max_seq_len
    members = (rows * chunk + 10,)
    streams = (bytes(4), bytes(40))
    blob = craft(fingerprint=fingerprint, members=members, chunk_size=chunk, batch_size=rows, streams=streams)
    start = time.perf_counter()
    with pytest.raises(OmnibyteError, match="group 0 claims 8,388,608 coded bytes"):
        codec.decompress(blob, model)
    assert time.perf_counter() - start < 1.0


def test_cpu_streams_claiming_16_bit_arithmetic_are_refused_before_decoding(model, blob, monkeypatch):
    monkeypatch.setattr(model, "decoder", lambda *a, **k: pytest.fail("the model ran"))
    for dtype in ("float16", "bfloat16"):
        settings = dataclasses.replace(container.unpack(blob).settings, dtype=dtype)
        with pytest.raises(OmnibyteError, match=f"dtype = {dtype} on device cpu"):
            codec.decompress(repack(blob, settings=settings), model)


class FakePanic(BaseException):
    """What a Rust panic inside constriction looks like to Python (pyo3's PanicException)."""


@pytest.mark.parametrize("failure", [AssertionError("invalid compressed data"), ValueError("bad"),
                                     RuntimeError("bad"), FakePanic("panicked at src/lib.rs")],
                         ids=lambda error: type(error).__name__)
@pytest.mark.parametrize("where", ["construct", "decode"])
def test_any_range_decoder_failure_is_a_corrupted_stream(text_model, monkeypatch, failure, where):
    import constriction

    blob = codec.compress(text(300), text_model, chunk_size=64, batch_size=2)
    real = constriction.stream.queue.RangeDecoder

    class Failing:
        def __init__(self, words):
            if where == "construct":
                raise failure
            self.inner = real(words)

        def decode(self, *args):
            raise failure

    monkeypatch.setattr(constriction.stream.queue, "RangeDecoder", Failing)
    with pytest.raises(OmnibyteError, match="corrupted stream .group 0 cannot be range-decoded") as caught:
        codec.decompress(blob, text_model)
    assert "\n" not in str(caught.value)


def test_random_payloads_with_valid_checksums_never_give_wrong_data(text_model):
    data = text(400, seed=3)
    blob = codec.compress(data, text_model, chunk_size=100, batch_size=2)
    header = container.unpack(blob)
    assert all(header.streams)
    rng = np.random.default_rng(0)
    outcomes = set()
    for trial in range(40):
        streams = tuple(rng.bytes(len(s) + 4 * int(rng.integers(-1, 2))) for s in header.streams)
        candidate = container.pack(dataclasses.replace(header, streams=streams))
        try:
            assert codec.decompress(candidate, text_model) == data
            outcomes.add("exact")
        except OmnibyteError as error:
            assert "\n" not in str(error)
            outcomes.add("corrupted stream" if "corrupted stream" in str(error) else str(error)[:22])
    assert outcomes <= {"exact", "corrupted stream", "decoded data fails its"}


def test_wrong_model_is_rejected(blob):
    with pytest.raises(OmnibyteError, match="wrong model"):
        codec.decompress(blob, tiny(seed=1, sharpen=30.0))


def test_wrong_device_settings_are_rejected(model, blob):
    import dataclasses

    settings = dataclasses.replace(container.unpack(blob).settings, device="cuda", dtype="bfloat16")
    with pytest.raises(OmnibyteError, match="made on cuda"):
        codec.decompress(repack(blob, settings=settings), model)


def test_decode_mismatch_is_caught_by_the_checksum(model, blob):
    # what a stream decoded with different arithmetic looks like: valid container, wrong result
    with pytest.raises(OmnibyteError, match="fails its checksum"):
        codec.decompress(repack(blob, original_digest=b"\x00" * 8), model)


def test_inconsistent_tables_are_rejected(model, blob):
    header = container.unpack(blob)
    with pytest.raises(OmnibyteError, match="disagree"):
        codec.decompress(repack(blob, streams=header.streams[:1]), model)
    with pytest.raises(OmnibyteError, match="context"):
        codec.compress(b"abc", model, chunk_size=model.max_seq_len + 1)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_parser_fuzz_arbitrary_bytes(data):
    for candidate in (data, container.MAGIC + data, container.MAGIC + b"\x01" + data):
        try:
            container.unpack(candidate)
        except OmnibyteError as error:
            assert "\n" not in str(error)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_parser_fuzz_mutated_containers(model, blob, data):
    mutated = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        position = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if kind == "flip" and mutated:
            mutated[position] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del mutated[position:]
        elif kind == "insert":
            mutated[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        elif mutated:
            del mutated[position]
    if bytes(mutated) == blob:
        return
    with pytest.raises(OmnibyteError):
        codec.decompress(bytes(mutated), model)


# ---- command line -----------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny")


def test_cli_compress_and_decompress_files(model_dir, tmp_path, capsys):
    first, second = tmp_path / "a.txt", tmp_path / "b.bin"
    first.write_bytes(b"some text to squeeze " * 20)
    second.write_bytes(bytes(range(256)))
    assert main(["compress", str(first), str(second), "--model", str(model_dir), "--chunk-size", "64",
                 "--device", "cpu"]) == 0
    assert "bits/byte" in capsys.readouterr().err
    out_dir = tmp_path / "restored"
    assert main(["decompress", str(first) + ".omb", str(second) + ".omb", "--model", str(model_dir),
                 "-o", str(out_dir), "-q"]) == 0
    assert (out_dir / "a.txt").read_bytes() == first.read_bytes()
    assert (out_dir / "b.bin").read_bytes() == second.read_bytes()
    # refuses to overwrite without --force; --portable codes on the CPU in float32
    assert main(["compress", str(first), "--model", str(model_dir), "-q"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["compress", str(first), "--model", str(model_dir), "--portable", "-f", "-q"]) == 0
    assert container.unpack((tmp_path / "a.txt.omb").read_bytes()).settings.dtype == "float32"


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "omnibyte.cli", *args], input=stdin, capture_output=True, env=env)


@pytest.mark.slow
def test_cli_stdin_to_stdout_and_back(model_dir):
    data = b"piped bytes \x00\x01\xff " * 30
    packed = run_cli("compress", "-", "--model", str(model_dir), "--chunk-size", "100", stdin=data)
    assert packed.returncode == 0, packed.stderr
    assert packed.stdout.startswith(container.MAGIC)
    unpacked = run_cli("decompress", "-", "--model", str(model_dir), stdin=packed.stdout)
    assert unpacked.returncode == 0 and unpacked.stdout == data


def test_cli_errors_leave_no_output(model_dir, tmp_path, capsys):
    source = tmp_path / "x.txt"
    source.write_bytes(b"abc" * 50)
    assert main(["compress", str(source), "--model", str(model_dir), "-q"]) == 0
    packed = tmp_path / "x.txt.omb"
    other_dir = save_model(tiny(seed=3), tmp_path / "other")
    cases = {
        "truncated": packed.read_bytes()[:-7],
        "wrong model": packed.read_bytes(),
        "payload checksum": packed.read_bytes()[:-3] + b"\x00\x00\x00",
        "version": packed.read_bytes()[:4] + b"\x09" + packed.read_bytes()[5:],
        "fails its checksum": repack(packed.read_bytes(), original_digest=b"\x01" * 8),
    }
    for message, blob in cases.items():
        target = tmp_path / "bad.omb"
        target.write_bytes(blob)
        model = other_dir if message == "wrong model" else model_dir
        assert main(["decompress", str(target), "--model", str(model), "-q"]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0], error
        assert not (tmp_path / "bad").exists()
    assert main(["decompress", str(source), "--model", str(model_dir)]) == 2
    assert "magic" in capsys.readouterr().err


# ---- the command line checks every output before any work ---------------------------------

def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden temporaries included) with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_outputs_are_checked_before_the_model_is_loaded(model_dir, tmp_path, capsys, monkeypatch):
    import omnibyte.cli.compress as cli_compress

    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_bytes(b"alpha " * 40)
    (work / "b.txt").write_bytes(b"beta " * 40)
    (work / "a.txt.omb").write_bytes(b"an existing output")
    (work / "folder").mkdir()
    (work / "other").mkdir()
    (work / "other" / "a.txt").write_bytes(b"same name, other folder")
    (work / "afile").write_bytes(b"not a folder")
    packed = codec.compress(b"restored " * 10, tiny(sharpen=30.0), chunk_size=CHUNK)
    (work / "r.bin.omb").write_bytes(packed)
    (work / "r.bin").write_bytes(b"an existing output")
    (work / "s.omb").write_bytes(packed)
    monkeypatch.setattr(cli_compress, "load_cli_model", lambda *a, **k: pytest.fail("the model was loaded"))
    w, model = str(work), ["--model", str(model_dir)]
    cases = [
        (["compress", f"{w}/a.txt"], "a.txt.omb exists (use --force"),
        (["compress", f"{w}/a.txt", "-o", f"{w}/folder"], "is a folder"),
        (["compress", f"{w}/a.txt", "-o", f"{w}/missing/x.omb"], "does not exist"),
        (["compress", f"{w}/a.txt", "-o", f"{w}/afile/x.omb"], "is not a folder"),
        (["compress", f"{w}/a.txt", "-o", f"{w}/a.txt", "-f"], "would overwrite its input"),
        (["compress", f"{w}/b.txt", f"{w}/a.txt", "-o", f"{w}/afile"], "is a file, not a folder"),
        (["compress", f"{w}/a.txt", f"{w}/other/a.txt", "-o", f"{w}/out", "-f"], "would both be written"),
        (["compress", f"{w}/b.txt", f"{w}/a.txt"], "a.txt.omb exists"),  # b.txt.omb is not written either
        (["compress", f"{w}/nothing.txt"], "cannot read"),
        (["compress", f"{w}/folder"], "is a folder, not a file"),
        (["compress", "-", "-"], "only once"),
        (["decompress", f"{w}/r.bin.omb"], "r.bin exists (use --force"),
        (["decompress", f"{w}/r.bin.omb", "-o", f"{w}/folder"], "is a folder"),
        (["decompress", f"{w}/r.bin.omb", "-o", f"{w}/missing/r.bin"], "does not exist"),
        (["decompress", f"{w}/s.omb", f"{w}/r.bin.omb"], "r.bin exists"),
        (["decompress", f"{w}/a.txt"], "wrong magic"),
    ]
    before = snapshot(work)
    for argv, message in cases:
        assert main([*argv, *model, "-q"]) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, lines)
        assert snapshot(work) == before, argv  # nothing written, changed or left behind


def test_cli_option_values_are_checked_when_parsed(model_dir, capsys):
    for option, value in [("--batch-size", "0"), ("--batch-size", str(2**16 + 1)), ("--chunk-size", "-5"),
                          ("--dtype", "int8"), ("--chunk-size", "x")]:
        assert main(["compress", "x.txt", "--model", str(model_dir), option, value]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and option in lines[0], lines


def test_cli_failed_decoding_leaves_no_temporary_files(model_dir, tmp_path, capsys):
    source = tmp_path / "x.txt"
    source.write_bytes(b"abc" * 50)
    assert main(["compress", str(source), "--model", str(model_dir), "-q"]) == 0
    packed = (tmp_path / "x.txt.omb").read_bytes()
    (tmp_path / "x.txt.omb").write_bytes(repack(packed, original_digest=b"\x01" * 8))
    source.unlink()
    before = snapshot(tmp_path)
    assert main(["decompress", str(tmp_path / "x.txt.omb"), "--model", str(model_dir), "-q"]) == 2
    assert "fails its checksum" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def assert_one_line_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    stderr = result.stderr.decode()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines


def test_cli_full_disk_broken_pipe_and_closed_stdin_are_one_line(model_dir, tmp_path):
    model = ["--model", str(model_dir), "-q"]
    data = b"piped bytes " * 20
    if os.path.exists("/dev/full"):
        with open("/dev/full", "wb") as full:
            result = subprocess.run([sys.executable, "-m", "omnibyte.cli", "compress", "-", *model],
                                    input=data, stdout=full, stderr=subprocess.PIPE,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert_one_line_failure(result, "No space left on device")
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write is a broken pipe
    try:
        result = subprocess.run([sys.executable, "-m", "omnibyte.cli", "compress", "-", *model],
                                input=data, stdout=write_end, stderr=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(write_end)
    assert_one_line_failure(result, "broken pipe")
    result = subprocess.run([sys.executable, "-m", "omnibyte.cli", "compress", "-", *model, "-o",
                             str(tmp_path / "out.omb")], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: os.close(0),
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_one_line_failure(result, "stdin")
    assert not (tmp_path / "out.omb").exists()


def test_cpu_coding_runs_on_one_thread_and_streams_do_not_depend_on_the_count(text_model, monkeypatch):
    """CPU coding steps on ``CPU_CODING_THREADS`` intra-op threads and restores the caller's
    count; the float stream is the same whatever the count, so a stream made on 2 threads
    decodes on 1."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    data = text(3000, seed=4)
    saved = torch.get_num_threads()
    seen = []
    real_step = codec._BatchStepper.__call__

    def recording_step(self, tokens):
        seen.append(torch.get_num_threads())
        return real_step(self, tokens)

    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(codec, "CPU_CODING_THREADS", 2)
        on_two = codec.compress(data, text_model, 200, 8, numerics="float")
        monkeypatch.setattr(codec, "CPU_CODING_THREADS", 1)
        monkeypatch.setattr(codec._BatchStepper, "__call__", recording_step)
        on_one = codec.compress(data, text_model, 200, 8, numerics="float")
        assert set(seen) == {1}
        assert torch.get_num_threads() == 2  # restored
        assert on_one == on_two
        assert codec.decompress(on_two, text_model) == data
    finally:
        torch.set_num_threads(saved)
