"""Compression with online adaptation (``--adapt``) and from-scratch models (``--model none``),
the container's version 4, and the defaults picked from the input size.

Every family in the registry is iterated (a family registered later is picked up), from a
trained model and from scratch: exact round trips around chunk and update boundaries, the
stream's settings recorded, adaptation that really lowers the size, refusals in one line."""
import dataclasses
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from omnibyte.apps import compress as codec
from omnibyte.apps import container
from omnibyte.cli import main
from omnibyte.cli.compress import trained_seq_len
from omnibyte.errors import OmnibyteError
from omnibyte.models import ARCHITECTURES, build_model
from omnibyte.models.serialization import load_model, save_model
from helpers import one_thread, train_briefly, word_text  # noqa: F401 (one_thread is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

CHUNK, BLOCK, ROWS = 32, 8, 3
FIXTURES = Path(__file__).parent / "fixtures"


def small_preset(arch: str) -> str:
    presets = ARCHITECTURES[arch][1]
    return "tiny" if "tiny" in presets else next(iter(presets))


def schedule(lr: float = 3e-3, block: int = BLOCK) -> container.AdaptSettings:
    return codec.adapt_settings(lr, block)


def sample(size: int, seed: int = 0) -> bytes:
    """Text with a few random bytes: coded and raw chunks both occur."""
    text = word_text(size, seed)
    noise = np.random.default_rng(seed).bytes(size)
    return bytes(noise[i] if i % 11 == 5 else text[i] for i in range(size))


SIZES = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]


@pytest.mark.parametrize("source", ["trained", "scratch"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_adapted_round_trips_are_exact_for_every_family(arch, source):
    """Sizes: empty, shorter than one update, at update and chunk boundaries, several groups."""
    torch.manual_seed(0)
    model = (build_model(arch, small_preset(arch)).eval() if source == "trained"
             else codec.scratch_model(arch, small_preset(arch), seed=3))
    reference = codec.build_scratch(model) if source == "scratch" else model
    before = {name: tensor.clone() for name, tensor in reference.state_dict().items()}
    for size in SIZES:
        data = sample(size, seed=size)
        blob = codec.compress(data, model, chunk_size=CHUNK, batch_size=ROWS, adapt=schedule())
        header = container.unpack(blob)
        assert header.adapt == schedule() and header.version == 4
        assert (header.fresh is not None) == (source == "scratch")
        restored = codec.decompress(blob) if source == "scratch" else codec.decompress(blob, model)
        assert restored == data, (arch, source, size)
    # the caller's model is never changed: a copy is trained
    assert all(torch.equal(before[name], tensor) for name, tensor in reference.state_dict().items())


def test_members_and_batch_shapes_round_trip_under_adaptation():
    model = codec.scratch_model("flat", "tiny", seed=1)
    members = [sample(70, 1), b"", sample(5, 2), sample(CHUNK, 3), np.random.default_rng(4).bytes(50)]
    for rows in (1, 2, 16):
        blob = codec.compress_members(members, model, chunk_size=16, batch_size=rows, adapt=schedule(block=5))
        assert codec.decompress_members(blob) == members


def test_adaptation_changes_the_model_and_lowers_the_size(text_model):
    """On a repetitive input the model never saw, adapting codes it in fewer bits than not."""
    unseen = UNSEEN
    plain = codec.compress(unseen, text_model, chunk_size=600, batch_size=4)
    adapted = codec.compress(unseen, text_model, chunk_size=600, batch_size=4, adapt=schedule(3e-3, 32))
    assert codec.decompress(adapted, text_model) == unseen
    plain_bits, adapted_bits = 8 * len(plain) / len(unseen), 8 * len(adapted) / len(unseen)
    assert adapted_bits < 0.8 * plain_bits, (plain_bits, adapted_bits)
    # from scratch, a fresh model learns the repetition: far below 8 bits/byte
    scratch = codec.compress(unseen, codec.scratch_model("flat", "tiny", seed=0), chunk_size=600,
                             batch_size=4, adapt=codec.adapt_settings(1e-2, 32, scratch=True))
    assert codec.decompress(scratch) == unseen
    assert 8 * len(scratch) / len(unseen) < 6.0


UNSEEN = (b"Omnibyte adapts online: zebra quartz jukebox vexing wizard! " * 40)[:2400]


def test_adapting_keeps_the_smaller_of_the_adapted_and_the_plain_stream(text_model):
    """Adapting pays on a long repetitive input the model never saw, not on a short one it
    knows (the adapt section alone costs 45 bytes): the smaller stream is kept either way."""
    layout = dict(chunk_size=600, batch_size=4)
    for data, adapts in [(UNSEEN, True), (word_text(300, seed=9), False)]:
        plain = codec.compress(data, text_model, **layout)
        adapted = codec.compress(data, text_model, **layout, adapt=schedule(3e-3, 32))
        blob, kept_adapted = codec.compress_adapted_or_plain(data, text_model, schedule(3e-3, 32), **layout)
        assert kept_adapted == adapts and blob == (adapted if adapts else plain)
        assert len(blob) == min(len(plain), len(adapted))
        assert (container.unpack(blob).adapt is not None) == adapts
        assert codec.decompress(blob, text_model) == data
    with pytest.raises(OmnibyteError, match="always adapts"):
        codec.compress_adapted_or_plain(UNSEEN, codec.scratch_model("flat", "tiny"))


def test_cli_adapt_keeps_the_smaller_stream_and_says_which(tmp_path, text_model, capsys):
    model_dir = save_model(text_model, tmp_path / "model")
    cases = [("unseen.txt", UNSEEN, ["--adapt-lr", "0.003", "--adapt-block", "32", "--chunk-size", "600",
                                     "--batch-size", "4"], "adapted)"),
             ("known.txt", word_text(300, seed=9), [], "kept without adapting: smaller than adapted)")]
    for name, data, options, said in cases:
        (tmp_path / name).write_bytes(data)
        capsys.readouterr()
        assert main(["compress", str(tmp_path / name), "--model", str(model_dir), "--adapt", *options,
                     "--device", "cpu"]) == 0
        assert capsys.readouterr().err.strip().endswith(said)
        header = container.unpack((tmp_path / f"{name}.omb").read_bytes())
        assert (header.adapt is not None) == (said == "adapted)")
        assert main(["decompress", str(tmp_path / f"{name}.omb"), "-o", str(tmp_path / f"{name}.out"),
                     "--model", str(model_dir), "-q"]) == 0
        assert (tmp_path / f"{name}.out").read_bytes() == data
    assert main(["compress", str(tmp_path / "known.txt"), "--model", str(model_dir), "--adapt-always", "-f"]) == 2
    assert "--adapt-always sets up --adapt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(0)
    return train_briefly(build_model("flat", "tiny"), word_text(20_000, seed=1))


@pytest.mark.slow
def test_encoder_and_decoder_agree_across_thread_counts():
    """MKL's products would round differently with another thread count (omnibyte sets MKL_CBWR)."""
    data = word_text(400, seed=5)
    model = codec.scratch_model("flat", "tiny", seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        blob = codec.compress(data, model, chunk_size=200, batch_size=2, adapt=schedule(3e-3, 32))
        torch.set_num_threads(2)
        assert codec.decompress(blob) == data
    finally:
        torch.set_num_threads(threads)


def test_scratch_recipe_is_what_the_decoder_rebuilds():
    recipe = codec.scratch_model("flat", "tiny", seed=7, max_sequence_length=256)
    blob = codec.compress(b"abc" * 50, recipe, chunk_size=64)
    header = container.unpack(blob)
    assert header.fresh == recipe and header.adapt == codec.adapt_settings(scratch=True)
    rebuilt = codec.build_scratch(header.fresh)
    assert header.fingerprint == codec.model_fingerprint(rebuilt)[:16]
    assert rebuilt.max_seq_len == 256
    other_seed = codec.build_scratch(codec.scratch_model("flat", "tiny", seed=8, max_sequence_length=256))
    assert codec.model_fingerprint(other_seed) != codec.model_fingerprint(rebuilt)


# ---- refusals --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapted_blob():
    return codec.compress(word_text(300, 1), codec.scratch_model("flat", "tiny", seed=0), chunk_size=64,
                          batch_size=2, adapt=schedule(3e-3, 16))


def recrc(blob: bytes, header_end: int) -> bytes:
    """``blob`` with its header CRC (at ``header_end``) recomputed, as a crafted file would have."""
    return blob[:header_end] + struct.pack("<I", zlib.crc32(blob[:header_end])) + blob[header_end + 4:]


def header_end(blob: bytes) -> int:
    header = container.unpack(blob)
    return len(blob) - 4 - sum(map(len, header.streams)) - len(header.raw_data) - 4


@pytest.mark.parametrize("offset, value, message", [
    (54, struct.pack("<d", float("nan")), "adapt field lr"),
    (54, struct.pack("<d", 0.0), "adapt field lr"),
    (62, struct.pack("<d", 1.0), "adapt field beta1"),
    (50, struct.pack("<I", 0), "adapt field block"),
    (49, b"\x07", "adapt field optimizer = 7"),
])
def test_crafted_adapt_fields_are_refused_in_one_line(adapted_blob, offset, value, message):
    blob = bytearray(adapted_blob)
    blob[offset : offset + len(value)] = value
    with pytest.raises(OmnibyteError, match=message) as caught:
        codec.decompress(recrc(bytes(blob), header_end(adapted_blob)))
    assert "\n" not in str(caught.value)


def test_damaged_and_truncated_adapt_streams_are_refused(adapted_blob):
    for cut in (40, 70, len(adapted_blob) // 2, len(adapted_blob) - 1):
        with pytest.raises(OmnibyteError, match="truncated|checksum|corrupted"):
            codec.decompress(adapted_blob[:cut])
    # a valid container whose schedule differs from the encoder's: decoding goes wrong, and the
    # range decoder or the digest says so
    header = container.unpack(adapted_blob)
    other = container.pack(dataclasses.replace(header, adapt=dataclasses.replace(header.adapt, lr=1e-2)))
    with pytest.raises(OmnibyteError, match="corrupted stream|fails its checksum"):
        codec.decompress(other)
    # a model section that is not JSON, or names an unknown family
    for document, message in [("{oops", "not JSON"), (json.dumps({"arch": "nope", "config": {}}), "nope")]:
        forged = container.pack(dataclasses.replace(header, fresh=container.FreshModel(document, 0)))
        with pytest.raises(OmnibyteError, match=message):
            codec.decompress(forged)
    # a recipe whose initial weights are not the encoder's (as from another omnibyte or torch
    # version): refused by the fingerprint, and the message says why a scratch stream can differ
    reseeded = container.pack(dataclasses.replace(header, fresh=container.FreshModel(header.fresh.document,
                                                                                     header.fresh.seed + 1)))
    with pytest.raises(OmnibyteError, match="wrong model: .* built from scratch whose initial weights differ"):
        codec.decompress(reseeded)
    # a version 3 stream cannot claim adaptation (flag bit 1 is unknown there)
    old = (FIXTURES / "v0.3" / "flat-members.omb").read_bytes()
    claiming = bytearray(old)
    claiming[24] |= 0b010  # the flags byte
    with pytest.raises(OmnibyteError, match="unknown bits 0x02 in version 3"):
        container.unpack(recrc(bytes(claiming), header_end(old)))


def test_a_stream_from_another_device_type_is_refused_before_decoding(adapted_blob, tmp_path, capsys):
    header = container.unpack(adapted_blob)
    on_cuda = container.pack(dataclasses.replace(
        header, settings=dataclasses.replace(header.settings, device="cuda", dtype="bfloat16")))
    if not torch.cuda.is_available():
        with pytest.raises(OmnibyteError, match="made on cuda"):
            codec.decompress(on_cuda)
    with pytest.raises(OmnibyteError, match="decodes only there, not on cpu"):
        codec.decompress(on_cuda, device="cpu")
    (tmp_path / "x.omb").write_bytes(on_cuda)
    assert main(["decompress", str(tmp_path / "x.omb"), "--device", "cpu", "-q"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_bad_adaptation_settings_are_one_line():
    for lr, block in [(0.0, 8), (float("nan"), 8), (2.0, 8), (1e-3, 0)]:
        with pytest.raises(OmnibyteError, match="bad adaptation setting"):
            codec.adapt_settings(lr, block)
    with pytest.raises(OmnibyteError, match="unknown preset"):
        codec.scratch_model("flat", "enormous")
    with pytest.raises(OmnibyteError, match="trained model"):
        codec.decompress(codec.compress(b"abc", build_model("flat", "tiny")))


# ---- streams of earlier versions ---------------------------------------------------------------

def test_a_version_3_stream_still_decodes():
    model = load_model(FIXTURES / "v0.1" / "flat")
    blob = (FIXTURES / "v0.3" / "flat-members.omb").read_bytes()  # written by omnibyte at 6293aae
    header = container.unpack(blob)
    assert header.version == 3 and header.adapt is None and header.fresh is None
    assert codec.decompress_members(blob, model) == [
        b"The quick brown fox jumps over the lazy dog. " * 3, np.random.default_rng(0).bytes(70), b""]


def test_version_3_streams_with_coded_groups_decode(text_model):
    data = word_text(500, seed=2)
    header = container.unpack(codec.compress(data, text_model, chunk_size=64, batch_size=3))
    assert not header.raw_flags().all()
    assert codec.decompress(container.pack(dataclasses.replace(header, version=3)), text_model) == data


# ---- defaults that need no tuning ---------------------------------------------------------------

def test_default_chunks_never_exceed_the_trained_length_and_fill_the_rows():
    model = build_model("flat", "tiny")  # context 1,024
    assert codec.default_layout(model, [100], "cpu") == (1024, 1)  # one chunk: the input
    assert codec.default_layout(model, [100_000], "cpu") == (1024, 64)
    assert codec.default_layout(model, [100_000], "cpu", train_seq_len=256) == (256, 64)
    assert codec.default_layout(model, [10_000], "cuda") == (1024, 10)
    chunk, rows = codec.default_layout(model, [5_000_000], "cpu")
    assert chunk == 1024 and rows == codec.DEFAULT_ROWS["cpu"]
    # adapting: fewer rows, so that there are at least MIN_ADAPT_UPDATES updates of rows x block bytes
    assert codec.default_layout(model, [100_000], "cpu", adapt_block=64) == (1024, 100_000 // (64 * 64))
    assert codec.default_layout(model, [1000], "cpu", adapt_block=64) == (1024, 1)
    header = container.unpack(codec.compress(b"x" * 3000, model, train_seq_len=512))
    assert header.settings.chunk_size == 512 and header.settings.batch_size == 6


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_streams_made_with_the_defaults_round_trip_for_every_family(arch):
    torch.manual_seed(0)
    model = build_model(arch, small_preset(arch)).eval()
    data = sample(1500, seed=9)
    blob = codec.compress(data, model)
    assert codec.decompress(blob, model) == data
    assert container.unpack(blob).settings.chunk_size <= model.max_seq_len


def test_the_trained_length_is_read_from_the_run_folder(tmp_path):
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "train_config.json").write_text(json.dumps({"seq_len": 384, "steps": 5}))
    assert trained_seq_len(tmp_path / "run") == 384
    assert trained_seq_len(tmp_path / "run" / "best") == 384
    assert trained_seq_len(tmp_path) is None


# ---- command line ---------------------------------------------------------------------------------

def test_cli_from_scratch_decodes_without_a_model(tmp_path, capsys):
    source = tmp_path / "notes.txt"
    source.write_bytes(word_text(2000, seed=4))
    assert main(["compress", str(source), "--model", "none", "--preset", "tiny", "--seed", "5",
                 "--adapt-block", "32", "--device", "cpu", "-q"]) == 0
    header = container.unpack((tmp_path / "notes.txt.omb").read_bytes())
    assert header.fresh.seed == 5 and header.adapt.block == 32 and header.mix == container.MixSettings()
    source.rename(tmp_path / "original.txt")
    assert main(["decompress", str(tmp_path / "notes.txt.omb"), "-q"]) == 0
    assert source.read_bytes() == (tmp_path / "original.txt").read_bytes()
    # --no-mix: adaptation alone (no mix section), and the mixed stream was the smaller
    assert main(["compress", str(source), "--model", "none", "--preset", "tiny", "--seed", "5", "--no-mix",
                 "--adapt-block", "32", "--device", "cpu", "-q", "-o", str(tmp_path / "plain.omb")]) == 0
    unmixed = (tmp_path / "plain.omb").read_bytes()
    assert container.unpack(unmixed).mix is None
    assert len((tmp_path / "notes.txt.omb").read_bytes()) < len(unmixed)


def test_cli_adapt_with_a_trained_model(tmp_path, text_model):
    model_dir = save_model(text_model, tmp_path / "model")
    (tmp_path / "train_config.json").write_text(json.dumps({"seq_len": 256}))  # not the model's folder
    source = tmp_path / "a.txt"
    source.write_bytes(word_text(1200, seed=6))
    assert main(["compress", str(source), "--model", str(model_dir), "--adapt", "--adapt-always", "--adapt-lr",
                 "0.002", "--device", "cpu", "-q"]) == 0
    header = container.unpack((tmp_path / "a.txt.omb").read_bytes())
    assert header.adapt.lr == 0.002 and header.fresh is None and header.settings.chunk_size == 1024
    assert main(["decompress", str(tmp_path / "a.txt.omb"), "-o", str(tmp_path / "b.txt"),
                 "--model", str(model_dir), "-q"]) == 0
    assert (tmp_path / "b.txt").read_bytes() == source.read_bytes()
    assert main(["decompress", str(tmp_path / "a.txt.omb"), "-o", str(tmp_path / "c.txt"), "-q"]) == 2
    assert header.mix is None  # a trained model adapts without mixing unless asked
    assert main(["compress", str(source), "--model", str(model_dir), "--adapt", "--adapt-always", "--mix",
                 "--device", "cpu", "-q", "-o", str(tmp_path / "mixed.omb")]) == 0
    assert container.unpack((tmp_path / "mixed.omb").read_bytes()).mix is not None
    assert main(["decompress", str(tmp_path / "mixed.omb"), "-o", str(tmp_path / "d.txt"),
                 "--model", str(model_dir), "-q"]) == 0
    assert (tmp_path / "d.txt").read_bytes() == source.read_bytes()
