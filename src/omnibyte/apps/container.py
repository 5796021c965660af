"""The ``.omb`` container: header, stream table, raw-chunk bitmap, coded streams, raw chunks.

Layout (version 4, all integers little-endian; spec in docs/compression.md)::

    magic            4   b"\\x89OMB"
    version          1   4
    fingerprint     16   first 16 bytes of the model's SHA-256 fingerprint
    device           1   0 cpu, 1 cuda      -- where the probabilities were computed
    dtype            1   0 float32, 1 bfloat16, 2 float16 (float32 only on the CPU)
    precision        1   log2 of the frequency total (24)
    flags            1   bit 0: probabilities came from the family's fast decoder;
                         bit 1: online adaptation (an adapt section follows the fixed part);
                         bit 2: the model was built from scratch (a model section follows);
                         bit 3: integer numerics (``omnibyte.models.integer``: device and
                         dtype are ignored, dtype is 0)
                         bit 4: the model is a built-in one (a name section follows)
                         bit 5: context mixing (a mix section follows; float numerics only)
    chunk_size       4   u32, bytes per chunk (each chunk starts from BOS)
    batch_size       4   u32, rows stepped together (the batch shape), 1..65,536
    original_size    8   u64, bytes of all members together
    original_digest  8   BLAKE2b-64 of the members, concatenated
    [adapt section]      (flag bit 1) u8 optimizer (0 adam), u32 block (bytes per row between
                         updates), f64 lr, beta1, beta2, eps, clip (gradient-norm clip, 0 none)
    [model section]      (flag bit 2) u64 seed, varint length + the model's config document
                         (UTF-8 JSON: format, arch, config) -- what the decoder rebuilds
    [name section]       (flag bit 4) varint length + the built-in model's name (ASCII, e.g.
                         ``general``): decompress loads it; the fingerprint must still match
    [mix section]        (flag bit 5) u16 orders (bit k - 1 set: contexts of the last k bytes,
                         k = 1..16), f64 lr, model_weight, count_weight (``apps.mixing``)
    num_members      varint, then one varint size per member      -- the chunk table
    num_streams      varint, then one varint byte length per stream -- the stream table
    raw_bitmap       ceil(chunks / 8) bytes: bit k (LSB first) set = chunk k is stored raw
    header_crc       4   CRC32 of every byte above
    streams              the groups' coded streams, concatenated in group order
    raw chunks           the raw chunks' bytes, concatenated in chunk order
    payload_crc      4   CRC32 of the streams and the raw chunks

Version 3 is the same without flag bits 1 and 2 (and their sections); version 2 is version 3
without ``raw_bitmap`` and the raw chunks (every chunk coded). Both are still read. Every size is checked against the format's limits and the blob's own length
before anything proportional to it is allocated; every parse error is an ``OmnibyteError``
with a one-line message.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
import zlib

import numpy as np

from omnibyte.errors import OmnibyteError

MAGIC = b"\x89OMB"
VERSION = 4
# version 2 (omnibyte 0.2.0): version 3 without raw chunks; version 3: version 4 without
# online adaptation and from-scratch models (flag bits 1 and 2)
READ_VERSIONS = (2, 3, 4)
# version 1 (omnibyte 0.1) had the layout of version 2, but its probabilities came from the old
# decoder (separate q/k/v projections, per-batch positions), which no longer exists: its streams
# are refused by name rather than decoded into garbage
RETIRED_VERSIONS = {1: "omnibyte 0.1"}
FINGERPRINT_BYTES = 16
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
PRECISION = 24  # the only precision this build codes (constriction's 24-bit frequencies)
FLAG_FAST, FLAG_ADAPT, FLAG_FRESH, FLAG_INTEGER = 0b0001, 0b0010, 0b0100, 0b1000
# bits 3 (integer numerics) and 4 (a built-in model's name) came later within version 4: they
# change no other field, and a build that predates them refuses such a stream by its unknown flag bit
FLAG_BUILTIN = 0b10000
FLAG_MIX = 0b100000  # bit 5 (context mixing) came later still, in the same way
KNOWN_FLAGS = {2: FLAG_FAST, 3: FLAG_FAST,
               4: FLAG_FAST | FLAG_ADAPT | FLAG_FRESH | FLAG_INTEGER | FLAG_BUILTIN | FLAG_MIX}  # by version
MAX_NAME_BYTES = 64  # a built-in model's name
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
OPTIMIZERS = ("adam",)  # the adapt section's optimizer byte
MAX_ADAPT_BLOCK = 1 << 24
MAX_DOCUMENT_BYTES = 1 << 16  # a from-scratch model's config document
MAX_BATCH_SIZE = 1 << 16  # rows per group, the encoder's limit
MAX_CHUNK_SIZE = (1 << 32) - 1  # u32
# the most probable byte is coded with frequency at most 2**24 - 255 out of 2**24, so every
# coded byte costs at least this many bits: a coded stream of S bytes holds at most
# (8 * S + STREAM_SLACK_BITS) / MIN_BITS_PER_CODED_BYTE bytes (about 365,000 per stream byte)
MIN_BITS_PER_CODED_BYTE = math.log2(2**PRECISION / (2**PRECISION - 255))
STREAM_SLACK_BITS = 64  # range-coder state that a flush may leave out (measured: none)

# fixed part after magic + version
_FIXED = struct.Struct("<16sBBBBIIQ8s")
_CRC = struct.Struct("<I")
_ADAPT = struct.Struct("<BIddddd")  # optimizer, block, lr, beta1, beta2, eps, clip
_SEED = struct.Struct("<Q")
_MIX = struct.Struct("<Hddd")  # orders bitmask, lr, model_weight, count_weight
MAX_MIX_ORDER = 16
# magic, version, the fixed fields and both CRCs: every container has these 57 bytes
FIXED_OVERHEAD = len(MAGIC) + 1 + _FIXED.size + 2 * _CRC.size


@dataclasses.dataclass(frozen=True)
class CodingSettings:
    """Everything the decoder needs to recompute the encoder's probabilities."""

    device: str  # "cpu" or "cuda"
    dtype: str  # "float32", "bfloat16" or "float16"
    chunk_size: int
    batch_size: int
    precision: int = PRECISION
    fast: bool = False  # computed through model.decoder(..., fast=True)
    integer: bool = False  # integer numerics: bit-identical on any device (device/dtype not used)


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
    """Online adaptation: after every ``block`` steps of a group, one optimizer step on the
    bytes the block coded (every row), so the next block is coded with the updated weights.
    The optimizer starts from a fresh state (zero moments) at the start of the stream."""

    block: int  # bytes per row between updates
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip: float = 1.0  # gradient-norm clip (0: none)
    optimizer: str = "adam"

    def problem(self) -> str | None:
        """What is out of range (named as the header field), or None."""
        if self.optimizer not in OPTIMIZERS:
            return f"optimizer = {self.optimizer!r} (known: {', '.join(OPTIMIZERS)})"
        if not 1 <= self.block <= MAX_ADAPT_BLOCK:
            return f"block = {self.block:,}, outside 1..{MAX_ADAPT_BLOCK:,}"
        checks = [("lr", self.lr, 0.0, 1.0, False), ("beta1", self.beta1, 0.0, 1.0, True),
                  ("beta2", self.beta2, 0.0, 1.0, True), ("eps", self.eps, 0.0, 1.0, False),
                  ("clip", self.clip, 0.0, 1e6, True)]
        for name, value, low, high, low_allowed in checks:
            if not (math.isfinite(value) and (value >= low if low_allowed else value > low) and value <= high
                    and not (name.startswith("beta") and value >= 1.0)):
                return f"{name} = {value!r}"
        return None


@dataclasses.dataclass(frozen=True)
class MixSettings:
    """Context mixing (``omnibyte.apps.mixing``): the model's log-probabilities and those of byte
    counts of the input's own contexts of each of ``orders`` bytes (and of order 0), weighted by
    weights that start at ``model_weight`` (the model) and ``count_weight`` (each count table)
    and learn at ``lr``."""

    orders: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)
    lr: float = 0.02
    model_weight: float = 1.0
    count_weight: float = 0.3

    def problem(self) -> str | None:
        """What is out of range (named as the header field), or None."""
        if not self.orders or list(self.orders) != sorted(set(self.orders)) \
                or not all(1 <= order <= MAX_MIX_ORDER for order in self.orders):
            return f"orders = {self.orders!r} (increasing, each in 1..{MAX_MIX_ORDER})"
        for name, value in (("lr", self.lr), ("model_weight", self.model_weight), ("count_weight", self.count_weight)):
            if not (math.isfinite(value) and 0 <= value <= 16) or (name == "lr" and value == 0):
                return f"{name} = {value!r}"
        return None

    def orders_mask(self) -> int:
        return sum(1 << (order - 1) for order in self.orders)


@dataclasses.dataclass(frozen=True)
class FreshModel:
    """A model built from scratch: its config document (JSON: format, arch, config) and the
    seed its initial weights come from (``omnibyte.models.registry.seeded``)."""

    document: str
    seed: int


@dataclasses.dataclass(frozen=True)
class Container:
    fingerprint: bytes
    settings: CodingSettings
    member_sizes: tuple[int, ...]
    original_digest: bytes
    streams: tuple[bytes, ...]
    # ceil(chunks / 8) bytes, bit k (LSB first) = chunk k (in member, offset order) is raw;
    # b"" means no chunk is raw
    raw_bitmap: bytes = b""
    raw_data: bytes = b""  # the raw chunks, concatenated in chunk order
    version: int = VERSION  # the version read (pack writes this version: 2, 3 or 4)
    adapt: AdaptSettings | None = None  # version 4: online adaptation
    fresh: FreshModel | None = None  # version 4: the model was built from scratch
    builtin: str | None = None  # version 4: the name of the built-in model it was made with
    mix: MixSettings | None = None  # version 4: context mixing

    @property
    def original_size(self) -> int:
        return sum(self.member_sizes)

    @property
    def num_chunks(self) -> int:
        return count_chunks(self.member_sizes, self.settings.chunk_size)

    def raw_flags(self) -> np.ndarray:
        """One bool per chunk (member, offset order): stored raw."""
        chunks = self.num_chunks
        if not self.raw_bitmap:
            return np.zeros(chunks, dtype=bool)
        bits = np.unpackbits(np.frombuffer(self.raw_bitmap, np.uint8), bitorder="little")
        return bits[:chunks].astype(bool)


def count_chunks(member_sizes, chunk_size: int) -> int:
    """Chunks of ``chunk_size`` bytes (the last of a member shorter); an empty member has none."""
    return sum(-(-size // chunk_size) for size in member_sizes)


def chunk_lengths(member_sizes, chunk_size: int) -> np.ndarray:
    """The length of every chunk, in member, offset order (int64)."""
    sizes = np.asarray(member_sizes, dtype=np.int64).reshape(-1)
    counts = -(-sizes // chunk_size)
    lengths = np.full(int(counts.sum()), chunk_size, dtype=np.int64)
    last = np.cumsum(counts)[counts > 0] - 1
    lengths[last] = sizes[counts > 0] - (counts[counts > 0] - 1) * chunk_size
    return lengths


def bitmap_bytes(chunks: int) -> int:
    return -(-chunks // 8)


def coded_capacity(stream_bytes: int) -> int:
    """The most bytes a coded stream of ``stream_bytes`` bytes can decode to (0 for none)."""
    if stream_bytes <= 0:
        return 0
    return int((8 * stream_bytes + STREAM_SLACK_BITS) / MIN_BITS_PER_CODED_BYTE)


def digest(members: list[bytes] | tuple[bytes, ...]) -> bytes:
    """BLAKE2b-64 of the members' concatenation: the end-to-end check."""
    hasher = hashlib.blake2b(digest_size=8)
    for member in members:
        hasher.update(member)
    return hasher.digest()


# ---- varints (unsigned LEB128) ----------------------------------------------------

def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(blob: bytes, offset: int, field: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(blob):
            raise OmnibyteError(f"truncated stream (header ends inside the {field})")
        byte = blob[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise OmnibyteError(f"corrupted stream (a number in the {field} is longer than 64 bits)")


def _read_list(blob: bytes, offset: int, field: str) -> tuple[list[int], int]:
    count, offset = _read_varint(blob, offset, field)
    if count > len(blob) - offset:  # every entry takes at least one byte
        raise OmnibyteError(f"corrupted or truncated stream ({field} lists {count:,} entries, but only "
                            f"{len(blob) - offset:,} bytes follow)")
    values = []
    for _ in range(count):
        value, offset = _read_varint(blob, offset, field)
        values.append(value)
    return values, offset


# ---- writing --------------------------------------------------------------------------

def pack(container: Container) -> bytes:
    settings = container.settings
    if container.version not in READ_VERSIONS:
        raise ValueError(f"cannot write container version {container.version}")
    header = bytearray(MAGIC)
    header.append(container.version)
    if container.version < 4 and (container.adapt or container.fresh or container.builtin):
        raise ValueError("adaptation, from-scratch and built-in models need container version 4")
    if container.version < 4 and (settings.integer or container.mix):
        raise ValueError("integer numerics and context mixing need container version 4")
    if container.mix and (settings.integer or container.mix.problem()):
        raise ValueError(f"bad context mixing {container.mix!r} (float numerics only)")
    if container.builtin is not None and (container.fresh or name_problem(container.builtin)):
        raise ValueError(f"bad built-in model name {container.builtin!r}")
    flags = ((FLAG_FAST if settings.fast else 0) | (FLAG_ADAPT if container.adapt else 0)
             | (FLAG_FRESH if container.fresh else 0) | (FLAG_INTEGER if settings.integer else 0)
             | (FLAG_BUILTIN if container.builtin else 0) | (FLAG_MIX if container.mix else 0))
    header += _FIXED.pack(
        container.fingerprint[:FINGERPRINT_BYTES], DEVICES.index(settings.device),
        DTYPES.index(settings.dtype), settings.precision, flags, settings.chunk_size,
        settings.batch_size, container.original_size, container.original_digest)
    if container.adapt:
        adapt = container.adapt
        header += _ADAPT.pack(OPTIMIZERS.index(adapt.optimizer), adapt.block, adapt.lr, adapt.beta1,
                              adapt.beta2, adapt.eps, adapt.clip)
    if container.fresh:
        document = container.fresh.document.encode()
        header += _SEED.pack(container.fresh.seed) + varint(len(document)) + document
    if container.builtin:
        header += varint(len(container.builtin)) + container.builtin.encode()
    if container.mix:
        mix = container.mix
        header += _MIX.pack(mix.orders_mask(), mix.lr, mix.model_weight, mix.count_weight)
    for table in (container.member_sizes, [len(s) for s in container.streams]):
        header += varint(len(table)) + b"".join(varint(value) for value in table)
    if container.version >= 3:
        size = bitmap_bytes(container.num_chunks)
        header += container.raw_bitmap or bytes(size)
    elif container.raw_bitmap.strip(b"\x00") or container.raw_data:
        raise ValueError("version 2 has no raw chunks")
    header += _CRC.pack(zlib.crc32(header))
    payload = b"".join(container.streams) + container.raw_data
    return bytes(header) + payload + _CRC.pack(zlib.crc32(payload))


# ---- reading ----------------------------------------------------------------------------

def read_version(blob: bytes) -> int:
    """The version byte, after the magic; refuses retired and unknown versions by name."""
    if len(blob) < len(MAGIC) + 1 or bytes(blob[: len(MAGIC)]) != MAGIC:
        raise OmnibyteError("not an omnibyte compressed stream (wrong magic bytes)")
    version = blob[len(MAGIC)]
    if version in RETIRED_VERSIONS:
        raise OmnibyteError(f"stream version {version} was made by {RETIRED_VERSIONS[version]}, whose decoder "
                            f"this build no longer has (it reads versions {READ_VERSIONS[0]} to {VERSION}); "
                            f"decompress it with {RETIRED_VERSIONS[version]}")
    if version not in READ_VERSIONS:
        raise OmnibyteError(f"unsupported omnibyte stream version {version} (this build reads versions "
                            f"{READ_VERSIONS[0]} to {VERSION})")
    return version


def _check_coding_mode(device: int, dtype: int, precision: int, flags: int, chunk_size: int,
                       batch_size: int, version: int = VERSION) -> None:
    """Only settings the encoder produces; each refusal names its header field."""
    if device >= len(DEVICES):
        raise OmnibyteError(f"corrupted stream (header field device = {device}, not 0 (cpu) or 1 (cuda))")
    if dtype >= len(DTYPES):
        raise OmnibyteError(f"corrupted stream (header field dtype = {dtype}, not 0 (float32), 1 (bfloat16) "
                            f"or 2 (float16))")
    if DEVICES[device] == "cpu" and DTYPES[dtype] != "float32":
        raise OmnibyteError(f"unsupported coding mode: header field dtype = {DTYPES[dtype]} on device cpu "
                            f"(the encoder codes on the CPU in float32 only)")
    if precision != PRECISION:
        raise OmnibyteError(f"unsupported coding mode: header field precision = {precision} bits "
                            f"(this build codes with {PRECISION})")
    known = KNOWN_FLAGS[version]
    if flags & ~known:
        meaning = ("only bit 0, fast decoder, is defined" if known == FLAG_FAST else
                   "bits 0 fast decoder, 1 adaptation, 2 from-scratch model, 3 integer numerics, "
                   "4 built-in model and 5 context mixing are defined")
        raise OmnibyteError(f"unsupported coding mode: header field flags = {flags:#04x} has unknown bits "
                            f"{flags & ~known:#04x} in version {version} ({meaning})")
    if flags & FLAG_INTEGER and (dtype != 0 or flags & (FLAG_FAST | FLAG_ADAPT | FLAG_FRESH | FLAG_MIX)):
        raise OmnibyteError(f"unsupported coding mode: integer numerics (flag bit 3) with dtype = {dtype} and "
                            f"flags = {flags:#04x} (the encoder writes dtype 0 and no other flag with it)")
    if chunk_size < 1:
        raise OmnibyteError("corrupted stream (header field chunk_size = 0)")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise OmnibyteError(f"corrupted stream (header field batch_size = {batch_size:,}, outside the "
                            f"format's 1..{MAX_BATCH_SIZE:,})")


def raw_bytes(member_sizes, chunk_size: int, raw: np.ndarray) -> int:
    """Total length of the chunks flagged in ``raw`` (one bool per chunk, member, offset order)."""
    total = int(raw.sum()) * chunk_size
    if not total:
        return 0
    last = -1
    for size in member_sizes:  # a member's last chunk is shorter by its shortfall
        count = -(-size // chunk_size)
        last += count
        if count and raw[last]:
            total -= count * chunk_size - size
    return total


def unpack(blob: bytes) -> Container:
    """Parse and check a container; raise ``OmnibyteError`` on anything malformed.

    Nothing proportional to a size read from the header is allocated before that size is
    checked against the format's limits and against ``len(blob)``.
    """
    blob = bytes(blob)
    version = read_version(blob)
    offset = len(MAGIC) + 1
    if len(blob) < offset + _FIXED.size:
        raise OmnibyteError("truncated stream (header ends early)")
    (fingerprint, device, dtype, precision, flags, chunk_size, batch_size, original_size,
     original_digest) = _FIXED.unpack_from(blob, offset)
    offset += _FIXED.size
    adapt_fields = fresh_fields = None
    if version >= 4 and flags & FLAG_ADAPT:
        if len(blob) < offset + _ADAPT.size:
            raise OmnibyteError("truncated stream (header ends inside the adapt section)")
        adapt_fields = _ADAPT.unpack_from(blob, offset)
        offset += _ADAPT.size
    if version >= 4 and flags & FLAG_FRESH:
        if len(blob) < offset + _SEED.size:
            raise OmnibyteError("truncated stream (header ends inside the model section)")
        (seed,) = _SEED.unpack_from(blob, offset)
        length, offset = _read_varint(blob, offset + _SEED.size, "model section")
        if length > min(MAX_DOCUMENT_BYTES, len(blob) - offset):
            raise OmnibyteError(f"corrupted or truncated stream (the model section claims a {length:,}-byte "
                                f"config document; at most {min(MAX_DOCUMENT_BYTES, len(blob) - offset):,})")
        fresh_fields = (seed, blob[offset : offset + length])
        offset += length
    builtin = None
    if version >= 4 and flags & FLAG_BUILTIN:
        length, offset = _read_varint(blob, offset, "name section")
        if length > min(MAX_NAME_BYTES, len(blob) - offset):
            raise OmnibyteError(f"corrupted or truncated stream (the name section claims a {length:,}-byte "
                                f"name; at most {min(MAX_NAME_BYTES, len(blob) - offset):,})")
        builtin = blob[offset : offset + length].decode("latin-1")
        offset += length
    mix_fields = None
    if version >= 4 and flags & FLAG_MIX:
        if len(blob) < offset + _MIX.size:
            raise OmnibyteError("truncated stream (header ends inside the mix section)")
        mix_fields = _MIX.unpack_from(blob, offset)
        offset += _MIX.size
    member_sizes, offset = _read_list(blob, offset, "member table")
    stream_sizes, offset = _read_list(blob, offset, "stream table")
    # the chunk count is arithmetic on the member table (at most one entry per blob byte)
    chunks = count_chunks(member_sizes, chunk_size) if chunk_size else 0
    bitmap_size = bitmap_bytes(chunks) if version >= 3 else 0
    if len(blob) < offset + bitmap_size + _CRC.size:
        raise OmnibyteError(f"truncated stream (header ends early: {len(blob):,} bytes, the header of "
                            f"{chunks:,} chunks needs {offset + bitmap_size + _CRC.size:,})")
    raw_bitmap = blob[offset : offset + bitmap_size]
    offset += bitmap_size
    if _CRC.unpack_from(blob, offset)[0] != zlib.crc32(blob[:offset]):
        raise OmnibyteError("corrupted stream (header checksum mismatch)")
    offset += _CRC.size

    # -- every field against the format's limits ------------------------------------------
    _check_coding_mode(device, dtype, precision, flags, chunk_size, batch_size, version)
    adapt = _adapt_settings(adapt_fields) if adapt_fields else None
    fresh = _fresh_model(*fresh_fields) if fresh_fields else None
    mix = _mix_settings(mix_fields) if mix_fields else None
    if builtin is not None and (fresh is not None or name_problem(builtin)):
        raise OmnibyteError(f"corrupted stream (name section {builtin[:MAX_NAME_BYTES]!r} "
                            + ("next to a from-scratch model)" if fresh is not None else "is not a model name)"))
    if sum(member_sizes) != original_size:
        raise OmnibyteError(f"corrupted stream (header field original_size = {original_size:,}, but the member "
                            f"table adds up to {sum(member_sizes):,})")
    if batch_size > max(1, chunks):
        raise OmnibyteError(f"corrupted stream (header field batch_size = {batch_size:,} exceeds the "
                            f"{chunks:,} chunks; the encoder uses min(batch, chunks) rows)")
    groups = -(-chunks // batch_size)
    if len(stream_sizes) != groups:
        raise OmnibyteError(f"corrupted stream (chunk and stream tables disagree: {chunks:,} chunks in groups "
                            f"of {batch_size:,} need {groups:,} streams, the table lists {len(stream_sizes):,})")
    for index, size in enumerate(stream_sizes):
        if size % 4:
            raise OmnibyteError(f"corrupted stream (stream {index} is {size:,} bytes, not whole 32-bit words)")
    raw = np.zeros(chunks, dtype=bool)
    if bitmap_size:
        bits = np.unpackbits(np.frombuffer(raw_bitmap, np.uint8), bitorder="little")
        if bits[chunks:].any():
            raise OmnibyteError("corrupted stream (raw-chunk bitmap has bits set past the last chunk)")
        raw = bits[:chunks].astype(bool)

    # -- ... and against the blob's own length ----------------------------------------------
    coded_size = sum(stream_sizes)
    raw_size = raw_bytes(member_sizes, chunk_size, raw)
    payload_end = offset + coded_size + raw_size
    if len(blob) < payload_end + _CRC.size:
        raise OmnibyteError(f"truncated stream ({len(blob):,} bytes, header promises {payload_end + _CRC.size:,})")
    if len(blob) > payload_end + _CRC.size:
        raise OmnibyteError("corrupted stream (trailing bytes after the payload)")
    capacity = sum(coded_capacity(size) for size in stream_sizes)
    if original_size - raw_size > capacity:
        raise OmnibyteError(f"corrupted stream (the header claims {original_size - raw_size:,} coded bytes; "
                            f"{coded_size:,} bytes of coded streams hold at most {capacity:,})")
    if _CRC.unpack_from(blob, payload_end)[0] != zlib.crc32(blob[offset:payload_end]):
        raise OmnibyteError("corrupted stream (payload checksum mismatch)")
    streams = []
    for size in stream_sizes:
        streams.append(blob[offset : offset + size])
        offset += size
    settings = CodingSettings(DEVICES[device], DTYPES[dtype], chunk_size, batch_size, precision,
                              bool(flags & FLAG_FAST), bool(flags & FLAG_INTEGER))
    return Container(fingerprint, settings, tuple(member_sizes), original_digest, tuple(streams),
                     raw_bitmap=raw_bitmap, raw_data=blob[offset:payload_end], version=version,
                     adapt=adapt, fresh=fresh, builtin=builtin, mix=mix)


def _mix_settings(fields: tuple) -> MixSettings:
    mask, lr, model_weight, count_weight = fields
    orders = tuple(order for order in range(1, MAX_MIX_ORDER + 1) if mask >> (order - 1) & 1)
    mix = MixSettings(orders, lr, model_weight, count_weight)
    problem = mix.problem()
    if problem:
        raise OmnibyteError(f"corrupted stream (mix field {problem})")
    return mix


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a built-in model's name in a stream (None when it can)."""
    if not 1 <= len(name) <= MAX_NAME_BYTES or not set(name) <= NAME_CHARACTERS:
        return f"a name is 1..{MAX_NAME_BYTES} characters of a-z, 0-9, '.', '_' and '-'"
    return None


def _adapt_settings(fields: tuple) -> AdaptSettings:
    optimizer, block, lr, beta1, beta2, eps, clip = fields
    if optimizer >= len(OPTIMIZERS):
        raise OmnibyteError(f"unsupported coding mode: adapt field optimizer = {optimizer} "
                            f"(known: {', '.join(f'{i} {name}' for i, name in enumerate(OPTIMIZERS))})")
    adapt = AdaptSettings(block, lr, beta1, beta2, eps, clip, OPTIMIZERS[optimizer])
    problem = adapt.problem()
    if problem:
        raise OmnibyteError(f"corrupted stream (adapt field {problem})")
    return adapt


def _fresh_model(seed: int, document: bytes) -> FreshModel:
    """The model section, checked to be a JSON object naming an arch and a config (the model
    itself is checked when it is built: every field, and its size against the limit)."""
    try:
        parsed = json.loads(document.decode())
    except (UnicodeDecodeError, ValueError):
        raise OmnibyteError("corrupted stream (the model section's config document is not JSON)") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("arch"), str) or not isinstance(parsed.get("config"), dict):
        raise OmnibyteError("corrupted stream (the model section's config document has no arch and config)")
    return FreshModel(document.decode(), seed)
