"""omnibyte compress/decompress: exact round trips, the container's checks, the CLI."""
import gzip
import os
import subprocess
import sys
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
from helpers import one_thread  # noqa: F401 (a fixture)

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


def test_compressed_size_matches_model_cross_entropy():
    model = tiny(sharpen=8.0)  # about 9 bits/byte here, with no probability below 2**-24
    data = (b"static int foo(struct bar *b)\n{\n\treturn b->x + 1;\n}\n" * 12)[:600]
    chunk_size = 200
    blob = roundtrip(model, data, chunk_size=chunk_size, batch_size=2)
    header = container.unpack(blob)
    payload_bits = 8 * sum(len(s) for s in header.streams)
    model_bits = sum(-score_bytes(model, data[i : i + chunk_size]).log2_probs.sum()
                     for i in range(0, len(data), chunk_size))
    assert abs(model_bits / len(data) - 8) > 0.5  # the size follows the model, not a uniform guess
    # range coding costs at most a few words per stream beyond the model's bits
    assert model_bits - 8 < payload_bits < model_bits + 64 * len(header.streams) + 0.002 * model_bits
    assert len(blob) - sum(len(s) for s in header.streams) < 80  # header + trailer


def test_quantized_frequencies_are_exact_and_leave_no_byte_at_zero():
    logits = torch.randn(64, 256) * torch.tensor([0.1, 5.0, 50.0, 500.0]).repeat(16).unsqueeze(1)
    weights = codec.quantized_frequencies(logits)
    total = 2**codec.PRECISION - 256
    assert torch.equal(weights, weights.floor()) and (weights >= 0).all()
    assert (weights.double().sum(-1) == total).all()
    probs = torch.softmax(logits.double(), -1)
    coded = (weights.double() + 1) / 2**codec.PRECISION
    assert ((coded - probs).abs() <= 300 / 2**codec.PRECISION).all()


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
