"""Context mixing (``omnibyte.apps.mixing``): the mixer against its reference cases, the mix
section of the container, and exact round trips of streams that mix, raw chunks included."""
import zlib

import numpy as np
import pytest
import torch

from omnibyte.apps import container
from omnibyte.apps.compress import compress, compress_members, decompress_members, scratch_model
from omnibyte.apps.container import MixSettings
from omnibyte.apps.mixing import ContextMixer, table_bits
from omnibyte.errors import OmnibyteError

CPU = torch.device("cpu")
TEXT = b"the cat sat on the mat; the cat sat on the hat. " * 12


def test_with_no_weight_on_the_counts_the_mix_is_the_model():
    mixer = ContextMixer(MixSettings(count_weight=0.0, lr=1e-9), rows=2, input_bytes=100, device=CPU)
    for byte in b"abcab":
        logits = torch.randn(2, 256)
        torch.testing.assert_close(mixer.mix(logits), torch.log_softmax(logits, -1))
        mixer.update(torch.tensor([byte, byte]), active=2)


def test_counts_learn_what_follows_a_context():
    """From a uniform model, after "ab" has been followed by "c" a few times, "c" is the most
    likely byte after "ab", and more likely after each repeat."""
    mixer = ContextMixer(MixSettings(), rows=1, input_bytes=1000, device=CPU)
    uniform = torch.zeros(1, 256)
    chances = []
    for byte in b"abc" * 6 + b"ab":
        mixed = mixer.mix(uniform)
        chances.append(torch.softmax(mixed, -1)[0, ord("c")].item())
        mixer.update(torch.tensor([byte]), active=1)
    after_ab = chances[2::3]  # the steps that predict the byte after each "ab"
    assert torch.softmax(mixer.mix(uniform), -1)[0].argmax().item() == ord("c")
    assert all(later > earlier for earlier, later in zip(after_ab, after_ab[1:]))
    assert after_ab[-1] > 0.5


def test_rows_past_their_end_teach_nothing():
    mixer = ContextMixer(MixSettings(), rows=2, input_bytes=100, device=CPU)
    weights = mixer.weights.clone()
    logits = torch.randn(2, 256)  # a model that is not uniform: the weights have something to learn
    mixer.mix(logits)
    mixer.update(torch.tensor([7, 9]), active=1)
    assert int(mixer.order_zero[7]) == 1 and int(mixer.order_zero[9]) == 0
    assert int(mixer.tables.sum()) == len(MixSettings().orders)  # one count per order, from row 0
    learned = mixer.weights.clone()
    assert not torch.equal(learned, weights)
    mixer.mix(logits)
    mixer.update(torch.tensor([7, 9]), active=0)
    assert int(mixer.order_zero.sum()) == 1 and torch.equal(mixer.weights, learned)


def test_each_group_starts_its_rows_without_context_and_keeps_the_counts():
    mixer = ContextMixer(MixSettings(), rows=1, input_bytes=100, device=CPU)
    fresh_slots = mixer.slots.clone()
    for byte in b"xyz":
        mixer.mix(torch.zeros(1, 256))
        mixer.update(torch.tensor([byte]), active=1)
    assert not torch.equal(mixer.slots, fresh_slots)
    mixer.start_group()
    assert torch.equal(mixer.slots, fresh_slots) and int(mixer.order_zero.sum()) == 3


def test_tables_grow_with_the_input_up_to_a_limit():
    assert table_bits(1) == 10 and table_bits(8192) == 15 and table_bits(1 << 30) == 16


# ---- the container's mix section -------------------------------------------------------------

def _mixed_blob(data: bytes = TEXT, **options) -> bytes:
    return compress(data, scratch_model(), chunk_size=128, batch_size=2, **options)


def test_the_mix_section_round_trips_and_is_the_default_from_scratch_only():
    header = container.unpack(_mixed_blob())
    assert header.mix == MixSettings()
    assert container.unpack(_mixed_blob(mix=False)).mix is None
    from omnibyte.models import build_model

    trained = build_model("flat", "tiny").eval()
    adapted = container.unpack(compress(TEXT, trained, chunk_size=128, batch_size=2, adapt=True))
    assert adapted.adapt is not None and adapted.mix is None
    mixed = compress(TEXT, trained, chunk_size=128, batch_size=2, adapt=True, mix=True)
    assert container.unpack(mixed).mix == MixSettings() and decompress_members(mixed, trained) == [TEXT]
    custom = MixSettings(orders=(2, 5), lr=0.01, model_weight=0.5, count_weight=0.1)
    assert container.unpack(_mixed_blob(mix=custom)).mix == custom


def test_crafted_mix_fields_are_refused_in_one_line():
    blob = _mixed_blob()
    header = container.unpack(blob)
    at = blob.index(container._MIX.pack(MixSettings().orders_mask(), 0.02, 1.0, 0.3))
    crc_at = len(blob) - 4 - sum(map(len, header.streams)) - len(header.raw_data) - 4  # the header's CRC
    for field, value in ((0, 0), (1, float("nan")), (2, -1.0)):
        fields = list(container._MIX.unpack_from(blob, at))
        fields[field] = value
        crafted = bytearray(blob)
        crafted[at: at + container._MIX.size] = container._MIX.pack(*fields)
        crafted[crc_at: crc_at + 4] = container._CRC.pack(zlib.crc32(bytes(crafted[:crc_at])))
        with pytest.raises(OmnibyteError, match="corrupted stream \\(mix field") as error:
            container.unpack(bytes(crafted))
        assert "\n" not in str(error.value)


def test_mixing_with_integer_numerics_is_refused():
    from omnibyte.models import build_model

    model = build_model("flat", "tiny").eval()
    with pytest.raises(OmnibyteError, match="integer numerics do not mix"):
        compress(TEXT, model, numerics="integer", mix=True)


# ---- streams that mix -------------------------------------------------------------------------

def test_mixing_makes_a_model_from_scratch_code_repetitive_text_smaller():
    data = TEXT * 2
    mixed, plain = _mixed_blob(data), _mixed_blob(data, mix=False)
    assert decompress_members(mixed) == [data]
    assert len(mixed) < 0.8 * len(plain)


def test_raw_rows_longer_than_every_coded_row_round_trip():
    """The encoder steps each group to its longest row and the mixer learns from every step; the
    decoder must follow it past its last coded row (a random chunk, stored raw, next to a shorter
    text chunk), and through a group stored wholly raw, for the next groups to decode."""
    def noise(seed):
        return bytes(np.random.default_rng(seed).integers(0, 256, 128, dtype=np.uint8))

    # coding order, longest first: [noise 1, noise 2] (all raw), [noise 3, text] (a raw row
    # longer than the coded one), [text, text]
    members = [noise(1), TEXT[:100], noise(2), noise(3), TEXT[100:190], TEXT[190:270]]
    blob = compress_members(members, scratch_model(), chunk_size=128, batch_size=2)
    header = container.unpack(blob)
    assert header.mix is not None
    assert header.raw_flags().tolist() == [True, False, True, True, False, False]
    assert decompress_members(blob) == members


def test_rolled_hashes_are_those_of_the_contexts_themselves():
    """After any bytes, each order's rolled hash equals the hash of its last k bytes computed
    from scratch (the formula of ``start_group``'s placeholders), and rows whose last k bytes
    agree share order k's slot."""
    from omnibyte.apps import mixing

    settings = MixSettings()
    mixer = ContextMixer(settings, rows=2, input_bytes=4096, device=CPU)
    texts = [b"abcdefghijkl the cat!", b"ABCDEFGHIJKL the cat!"]  # the last 9 bytes agree
    for step in range(len(texts[0])):
        mixer.mix(torch.zeros(2, 256))
        mixer.update(torch.tensor([texts[0][step], texts[1][step]]), active=2)
    for row, text in enumerate(texts):
        for index, order in enumerate(settings.orders):
            context = ([256] * order + list(text))[-order:]
            expected = sum((value + 1) * pow(mixing._BASE, i, 1 << 32) for i, value in enumerate(reversed(context)))
            assert int(mixer.hashes[row, index]) == expected & mixing._MASK32
    same = [order <= 9 for order in settings.orders]
    assert (mixer.slots[0] == mixer.slots[1]).tolist() == same
