"""Integer numerics (``omnibyte.models.integer``, ``compress(..., numerics="integer")``): exact
round trips, cached = full forward, batched = one by one, the float64 product path (what CUDA
runs) = the int64 one = the CPU's int8 one, close to the float model, refusals, and streams made on the GPU
(tests/fixtures/integer, from bench/make_integer_fixtures.py) decoding here on the CPU."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from omnibyte.apps import compress as codec
from omnibyte.apps import container
from omnibyte.cli import main
from omnibyte.errors import OmnibyteError
from omnibyte.models import BOS, build_model
from omnibyte.models.integer import (ACT_BITS, EXP_IN_BITS, EXP_TABLE_BITS, IntegerFlatModel, bit_length, int8_linear, int8_products_exact, integer_model,
                                     isqrt, narrow, shift_round)
from omnibyte.models.serialization import save_model
from helpers import one_thread, train_briefly, word_text  # noqa: F401 (one_thread is a fixture)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "integer"
CHUNK = 48

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_model():
    """A tiny flat model that knows ``word_text``: its chunks are range-coded, not stored raw."""
    torch.manual_seed(0)
    return train_briefly(build_model("flat", "tiny"), word_text(20_000, seed=1), steps=80)


@pytest.fixture(scope="module")
def integer(text_model):
    return integer_model(text_model)


def tokens_of(data: bytes) -> torch.Tensor:
    return torch.tensor([[BOS, *data[:-1]]])


# ---- the integer primitives against plain references ------------------------------------------

def test_shift_round_is_round_half_up_for_both_signs_and_tensor_shifts():
    values = torch.arange(-300, 301, dtype=torch.int64)
    for shift in (0, 1, 3, 7):
        expected = torch.tensor([math.floor(v / 2**shift + 0.5) for v in values.tolist()])
        assert torch.equal(shift_round(values, shift), expected)
        assert torch.equal(shift_round(values, torch.full_like(values, shift)), expected)
    assert torch.equal(shift_round(values, -2), values * 4)
    assert torch.equal(shift_round(values, torch.full_like(values, -2)), values * 4)


@pytest.mark.parametrize("bits", [16, 30])
def test_the_exp_table_equals_its_two_table_definition(integer, bits):
    """round(exp(-d) 2**bits) is one look-up in a table derived from the high/low exp tables;
    every index (and past the range, where it is 0) against the two-table formula."""
    arithmetic = integer.arithmetic
    shift = ACT_BITS - EXP_IN_BITS  # distances in activation units
    index = torch.arange(arithmetic.exp_high.shape[0] * 256 + 300)
    distance = index << shift
    high, low = index >> 8, index & 255
    inside = high < arithmetic.exp_high.shape[0]
    product = arithmetic.exp_high[high.clamp_max(arithmetic.exp_high.shape[0] - 1)] * arithmetic.exp_low[low]
    expected = torch.where(inside, shift_round(product, 2 * EXP_TABLE_BITS - bits), 0)
    assert torch.equal(arithmetic.exp(distance, bits), expected)
    assert int(arithmetic.exp(torch.zeros(1, dtype=torch.long), bits)) == 1 << bits


def test_bit_length_isqrt_and_narrow_are_exact():
    generator = torch.Generator().manual_seed(0)
    numbers = torch.randint(0, 2**62, (500,), generator=generator, dtype=torch.int64)
    assert bit_length(numbers).tolist() == [int(n).bit_length() for n in numbers.tolist()]
    roots = torch.randint(2**59, 2**62, (500,), generator=generator, dtype=torch.int64)
    # and where a float64 root would round across an integer: perfect squares, their
    # neighbours, the ends of the range
    edges = [r * r + d for r in (2**30 - 1, 2**30, 2**30 + 12345, 2**31 - 1, 1518500249) for d in (-1, 0, 1)]
    roots = torch.cat([roots, torch.tensor([2**59, 2**62 - 1, *[n for n in edges if 2**59 <= n < 2**62]])])
    assert isqrt(roots).tolist() == [math.isqrt(int(n)) for n in roots.tolist()]
    rows = torch.randint(-2**40, 2**40, (20, 33), generator=generator, dtype=torch.int64)
    rows[3] = 5  # small rows are not shifted
    mantissa, shift = narrow(rows)
    assert mantissa.abs().max() <= 2**15 and int(shift[3]) == 0
    assert ((mantissa << shift) - rows).abs().le(2 ** shift.clamp_min(1)).all()


# ---- the model: exact paths, close to the float model --------------------------------------------

def test_step_by_step_prefill_and_full_forward_give_identical_frequencies(integer):
    data = word_text(70, seed=3)
    tokens = tokens_of(data)
    full = integer(tokens)[0]  # [T, 256]
    assert full.sum(-1).eq(2**24 - 256).all() and full.min() >= 0
    decoder = integer.decoder(1, 80)
    steps = torch.stack([decoder.step(tokens[:, t])[0] for t in range(tokens.shape[1])])
    assert torch.equal(steps, full)
    decoder = integer.decoder(1, 80)
    assert torch.equal(decoder.prefill(tokens[:, :40])[0], full[39])
    assert torch.equal(decoder.step(tokens[:, 40])[0], full[40])


@pytest.mark.parametrize("fast", [False, True])
def test_extend_and_rewind_give_the_full_forwards_integers(integer, fast):
    """``extend`` (every position of ragged rows at once) and ``rewind`` (drop the last tokens,
    then append others) against the full forward of each row's final text."""
    texts = [word_text(n, seed=n) for n in (40, 25)]
    tokens = torch.zeros(2, 40, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens[row, : len(text)] = tokens_of(text)[0]
    decoder = integer.decoder(2, 64, fast=fast)
    first = decoder.extend(tokens[:, :30], [30, 25])
    for row, text in enumerate(texts):
        full = integer(tokens_of(text))[0]
        assert torch.equal(first[row, : min(30, len(text))], full[:30])
    decoder.rewind([10, 5])  # rows back at 20 tokens
    again = decoder.extend(tokens[:, 20:40], [20, 5])
    for row, text in enumerate(texts):
        full = integer(tokens_of(text))[0]
        assert torch.equal(again[row, : len(text) - 20], full[20:])


def test_batched_ragged_rows_equal_one_by_one(integer):
    texts = [word_text(n, seed=n) for n in (30, 57, 12)]
    width = max(len(t) for t in texts)
    tokens = torch.zeros(3, width, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens[row, : len(text)] = tokens_of(text)[0]
    decoder = integer.decoder(3, 100)
    batched = decoder.prefill(tokens, [len(t) for t in texts])
    following = decoder.step(torch.tensor([65, 66, 67]))
    for row, text in enumerate(texts):
        alone = integer.decoder(1, 100)
        assert torch.equal(alone.prefill(tokens_of(text)), batched[row : row + 1])
        assert torch.equal(alone.step(torch.tensor([65 + row])), following[row : row + 1])


def test_fast_static_steps_equal_eager_steps(integer):
    """The fast decoder (whole aligned cache; a CUDA graph on CUDA) gives the same integers."""
    tokens = tokens_of(word_text(50, seed=4)).repeat(2, 1)
    tokens[1, 10:] = 66
    eager, fast = integer.decoder(2, 60), integer.decoder(2, 60, fast=True)
    assert fast.cache.capacity == 64
    for t in range(tokens.shape[1]):
        assert torch.equal(eager.step(tokens[:, t]), fast.step(tokens[:, t]))
    assert torch.equal(integer.decoder(2, 60).prefill(tokens), integer.decoder(2, 60, fast=True).prefill(tokens))


def test_int64_products_equal_float64_products(text_model):
    """The cross-device argument, checked here: the float64 products (what CUDA runs) are exact,
    so they give what exact int64 products give, bit for bit."""
    by_float = integer_model(text_model, matmul="float64")
    by_int = integer_model(text_model, matmul="int64")
    tokens = tokens_of(word_text(120, seed=5) + bytes(range(0, 256, 9)))
    assert torch.equal(by_float(tokens), by_int(tokens))
    assert by_float.fingerprint() == by_int.fingerprint()


@pytest.mark.skipif(not int8_products_exact(), reason="this CPU's int8 kernel is not exact: float64 products run")
def test_int8_products_equal_int64_products(text_model):
    """The CPU's int8 products (two int8 halves per mantissa, int32 sums) give the exact integers,
    on the mantissas' extremes (32,640 and up need the extra row) and in a whole model."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-127, 128, (896, 40), generator=generator)
    weight[:, 0], weight[:, 1] = 127, -127
    edges = torch.tensor([2**15, -2**15, 32640, 32639, -32640, -32641, 127, 128, -128, -129, 0, 255, 256])
    mantissa = torch.randint(-2**15, 2**15 + 1, (7, 3, 896), generator=generator)
    mantissa[0, 0] = 2**15
    mantissa[0, 1] = -2**15
    mantissa[1, :, : len(edges)] = edges
    got = int8_linear(mantissa, weight.to(torch.int8))
    assert torch.equal(got, mantissa @ weight)
    no_high = mantissa.clamp(-32000, 32000)  # the path without the extra row
    assert torch.equal(int8_linear(no_high, weight.to(torch.int8)), no_high @ weight)
    by_int8 = integer_model(text_model, matmul="int8")
    by_int = integer_model(text_model, matmul="int64")
    tokens = tokens_of(word_text(120, seed=5) + bytes(range(0, 256, 9)))
    assert torch.equal(by_int8(tokens), by_int(tokens))
    assert by_int8.fingerprint() == by_int.fingerprint()
    assert integer_model(text_model).matmul == "int8"  # the CPU default


def test_the_same_float_model_always_quantizes_to_the_same_integers(text_model):
    assert integer_model(text_model).fingerprint() == integer_model(text_model).fingerprint()
    assert integer_model(text_model).fingerprint() != integer_model(build_model("flat", "tiny", seed=3)).fingerprint()


def test_integer_model_codes_almost_as_well_as_the_float_model(text_model, integer):
    """Not a degenerate model: on held-out text its cost is within 2% of the float model's (the
    same quantization to 2**24 frequencies on both sides), and the KL divergence is small."""
    data = word_text(600, seed=11)
    tokens, targets = tokens_of(data), torch.tensor(list(data))
    integer_probabilities = (integer(tokens)[0].double() + 1) / 2**24
    float_weights = codec.quantized_frequencies(text_model(tokens)[0].detach())
    float_probabilities = (float_weights.double() + 1) / 2**24
    positions = torch.arange(len(data))
    integer_bits = -integer_probabilities[positions, targets].log2().mean().item()
    float_bits = -float_probabilities[positions, targets].log2().mean().item()
    assert float_bits < 4.0  # the trained model knows this text
    assert abs(integer_bits - float_bits) < 0.02 * float_bits
    kl = (float_probabilities * (float_probabilities / integer_probabilities).log2()).sum(-1).mean().item()
    assert kl < 0.01


# ---- compress / decompress -------------------------------------------------------------------

def roundtrip(model, data: bytes, **options) -> bytes:
    blob = codec.compress(data, model, numerics="integer", **options)
    assert codec.decompress(blob, model) == data
    return blob


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7])
def test_roundtrip_at_chunk_boundaries(text_model, size):
    data = word_text(size, seed=size)
    blob = roundtrip(text_model, data, chunk_size=CHUNK, batch_size=2)
    header = container.unpack(blob)
    assert header.settings.integer and not header.settings.fast and header.version == container.VERSION
    if size >= CHUNK:
        assert not header.raw_flags().any() and sum(map(len, header.streams)) < size / 2  # range-coded, not raw


@pytest.mark.parametrize("layout", [dict(chunk_size=CHUNK, batch_size=3), dict(chunk_size=CHUNK, batch_size=1),
                                    dict(chunk_size=200, batch_size=8), {}])
def test_whole_chunk_encoding_makes_the_stepped_encoders_stream(text_model, monkeypatch, layout):
    """The encoder scores each group in whole-chunk passes; the stream must be the very one an
    encoder stepping byte by byte (as the decoder does) makes: ragged rows, raw chunks, an empty
    member, a pass shorter than the chunk."""
    members = [word_text(1000, seed=3), bytes(np.random.default_rng(0).integers(0, 256, 90, dtype=np.uint8)), b"",
               word_text(CHUNK + 5, seed=4), b"x"]
    monkeypatch.setitem(codec.ENCODE_PASS_ELEMENTS, "cpu", 4 * 5000)  # a few positions per pass
    reported = {True: [], False: []}
    whole = codec.compress_members(members, text_model, numerics="integer", **layout,
                                   progress=lambda count, bits: reported[True].append((count, bits)))
    monkeypatch.setattr(codec, "PARALLEL_INTEGER_ENCODING", False)
    stepped = codec.compress_members(members, text_model, numerics="integer", **layout,
                                     progress=lambda count, bits: reported[False].append((count, bits)))
    assert whole == stepped
    for calls in reported.values():  # every byte reported once (the bits are an estimate)
        assert sum(count for count, _ in calls) == sum(map(len, members))
    assert codec.decompress_members(whole, text_model) == members


def test_members_and_raw_chunks_round_trip(text_model):
    members = [word_text(100, seed=1), bytes(np.random.default_rng(0).integers(0, 256, 90, dtype=np.uint8)), b""]
    blob = codec.compress_members(members, text_model, chunk_size=CHUNK, batch_size=3, numerics="integer")
    assert codec.decompress_members(blob, text_model) == members
    assert container.unpack(blob).raw_flags().any()


def test_a_stream_made_on_cuda_decodes_on_the_cpu(text_model):
    """The header's device is a record only: the same stream marked as made on cuda decodes here."""
    data = word_text(200, seed=2)
    header = container.unpack(codec.compress(data, text_model, numerics="integer", chunk_size=CHUNK))
    on_cuda = dataclasses.replace(header, settings=dataclasses.replace(header.settings, device="cuda"))
    assert codec.decompress(container.pack(on_cuda), text_model) == data


def test_a_wrong_digest_is_a_corrupted_integer_stream(text_model):
    header = container.unpack(codec.compress(word_text(200), text_model, numerics="integer", chunk_size=CHUNK))
    with pytest.raises(OmnibyteError, match=r"the stream is corrupted \(integer numerics"):
        codec.decompress(container.pack(dataclasses.replace(header, original_digest=bytes(8))), text_model)


def test_integer_streams_need_the_same_model(text_model):
    blob = codec.compress(word_text(100), text_model, numerics="integer")
    with pytest.raises(OmnibyteError, match="wrong model"):
        codec.decompress(blob, build_model("flat", "tiny", seed=4))


@pytest.mark.parametrize("case, message", [
    (dict(adapt=True), "integer numerics do not adapt"),
    (dict(dtype="bfloat16"), "applies to float numerics"),
    (dict(numerics="exact"), "unknown numerics 'exact'"),
])
def test_unsupported_integer_options_are_one_line_errors(text_model, case, message):
    options = {"numerics": "integer", **case}
    with pytest.raises(OmnibyteError, match=message) as error:
        codec.compress(b"abc", text_model, **options)
    assert "\n" not in str(error.value)


def test_other_families_and_from_scratch_models_are_refused():
    with pytest.raises(OmnibyteError, match="flat family only; this model is 'patch'"):
        codec.compress(b"abc", build_model("patch", "tiny", seed=0), numerics="integer")
    with pytest.raises(OmnibyteError, match="do not adapt"):
        codec.compress(b"abc", codec.scratch_model("flat", "tiny"), numerics="integer")
    with pytest.raises(OmnibyteError, match="qk_norm"):
        IntegerFlatModel(build_model("flat", "tiny", seed=0, qk_norm=False))


def test_crafted_integer_flags_with_other_modes_are_refused(text_model):
    header = container.unpack(codec.compress(b"abc" * 20, text_model, numerics="integer"))
    for settings in (dataclasses.replace(header.settings, dtype="bfloat16", device="cuda"),
                     dataclasses.replace(header.settings, fast=True)):
        blob = container.pack(dataclasses.replace(header, settings=settings))
        with pytest.raises(OmnibyteError, match="unsupported coding mode: integer numerics"):
            container.unpack(blob)


# ---- the CLI -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, text_model):
    folder = tmp_path_factory.mktemp("integer") / "model"
    save_model(text_model, folder)
    return folder


def test_cli_integer_round_trip(model_dir, tmp_path):
    source = tmp_path / "notes.txt"
    source.write_bytes(word_text(300, seed=9))
    assert main(["compress", str(source), "--model", str(model_dir), "--numerics", "integer", "-q"]) == 0
    assert container.unpack((tmp_path / "notes.txt.omb").read_bytes()).settings.integer
    restored = tmp_path / "restored.txt"
    assert main(["decompress", str(tmp_path / "notes.txt.omb"), "--model", str(model_dir), "-o", str(restored),
                 "-q"]) == 0
    assert restored.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("extra, message", [
    (["--adapt"], "--numerics integer does not adapt"),
    (["--portable"], "drop --portable"),
    (["--dtype", "float16"], "--numerics integer has no dtype"),
])
def test_cli_refuses_integer_with_float_only_options(model_dir, tmp_path, capsys, extra, message):
    source = tmp_path / "notes.txt"
    source.write_bytes(b"hello")
    code = main(["compress", str(source), "--model", str(model_dir), "--numerics", "integer", *extra])
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and len(error.splitlines()) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_cli_refuses_a_float_cuda_stream_on_this_cpu_before_writing_anything(model_dir, text_model, tmp_path,
                                                                             capsys):
    """A float stream made on cuda cannot be reproduced on the CPU: one line, exit 2, and not even
    the decodable stream given before it is written."""
    good = codec.compress(b"fine " * 30, text_model)
    header = container.unpack(codec.compress(b"made on a GPU " * 10, text_model))
    on_cuda = dataclasses.replace(header, settings=dataclasses.replace(header.settings, device="cuda",
                                                                       dtype="bfloat16"))
    (tmp_path / "a.omb").write_bytes(good)
    (tmp_path / "b.omb").write_bytes(container.pack(on_cuda))
    out = tmp_path / "out"
    for device in ([], ["--device", "cpu"]):
        code = main(["decompress", str(tmp_path / "a.omb"), str(tmp_path / "b.omb"), "--model", str(model_dir),
                     "-o", str(out), *device])
        error = capsys.readouterr().err.strip()
        assert code == 2 and len(error.splitlines()) == 1, error
        assert "cuda" in error and "--numerics integer" in error
        assert not out.exists()


# ---- streams made on the GPU (bench/make_integer_fixtures.py) ------------------------------------

def _fixture_recipe():
    spec = importlib.util.spec_from_file_location("make_integer_fixtures", ROOT / "bench" / "make_integer_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_streams_made_on_the_gpu_decode_here():
    if not FIXTURES.is_dir():
        pytest.skip(f"no {FIXTURES.relative_to(ROOT)}: make it on a GPU machine with "
                    f"python bench/make_integer_fixtures.py --device cuda --out tests/fixtures/integer")
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    recipe = _fixture_recipe()
    assert manifest["config"] == recipe.FIXTURE_CONFIG
    model = recipe.fixture_model(manifest["seed"])
    assert len(manifest["fixtures"]) >= 5
    coded = 0
    for entry in manifest["fixtures"]:
        blob = (FIXTURES / entry["file"]).read_bytes()
        header = container.unpack(blob)
        assert header.settings.integer and header.settings.device == manifest["device"].split(":")[0]
        data = codec.decompress(blob, model)
        assert hashlib.sha256(data).hexdigest() == entry["input_sha256"] and len(data) == entry["input_bytes"]
        coded += int((~header.raw_flags()).sum())
    assert coded >= 5  # most text chunks were range-coded, so the model's frequencies were used


def test_a_dense_integer_step_equals_the_masked_step(integer):
    """Rows of equal length step without the mask's two selects: the same integers."""
    from omnibyte.models.layers import KVCache

    tokens = tokens_of(word_text(40, seed=7)).repeat(2, 1)
    caches = [KVCache(integer.stack_config, 2, dtype=torch.float64, max_len=64) for _ in range(2)]
    with torch.no_grad():
        for cache in caches:
            integer.hidden(tokens[:, :30], cache, torch.ones(2, 30, dtype=torch.bool), 30)
        one_each = torch.ones(2, 1, dtype=torch.bool)
        for t in range(30, 40):
            masked = integer.hidden(tokens[:, t : t + 1], caches[0], one_each, t + 1, dense=False)
            dense = integer.hidden(tokens[:, t : t + 1], caches[1], one_each, t + 1, dense=True)
            assert torch.equal(masked, dense)
