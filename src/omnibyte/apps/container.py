"""The ``.omb`` container: header, stream table, coded streams, trailer.

Layout (version 2, all integers little-endian; spec in docs/compression.md)::

    magic            4   b"\\x89OMB"
    version          1   2
    fingerprint     16   first 16 bytes of the model's SHA-256 fingerprint
    device           1   0 cpu, 1 cuda      -- where the probabilities were computed
    dtype            1   0 float32, 1 bfloat16, 2 float16
    precision        1   log2 of the frequency total (24)
    flags            1   bit 0: probabilities came from the family's fast decoder
    chunk_size       4   u32, bytes per chunk (each chunk starts from BOS)
    batch_size       4   u32, rows stepped together (the batch shape)
    original_size    8   u64, bytes of all members together
    original_digest  8   BLAKE2b-64 of the members, concatenated
    num_members      varint, then one varint size per member      -- the chunk table
    num_streams      varint, then one varint byte length per stream -- the stream table
    header_crc       4   CRC32 of every byte above
    streams              the coded streams, concatenated
    payload_crc      4   CRC32 of the streams

Every parse error is an ``OmnibyteError`` with a one-line message.
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
import zlib

from omnibyte.errors import OmnibyteError

MAGIC = b"\x89OMB"
VERSION = 2
# version 1 (omnibyte 0.1) had this layout too, but its probabilities came from the old decoder
# (separate q/k/v projections, per-batch positions), which no longer exists: its streams are
# refused by name rather than decoded into garbage
RETIRED_VERSIONS = {1: "omnibyte 0.1"}
FINGERPRINT_BYTES = 16
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
MIN_PRECISION, MAX_PRECISION = 9, 24  # constriction's range coder codes with 24-bit frequencies

# fixed part after magic + version
_FIXED = struct.Struct("<16sBBBBIIQ8s")
_CRC = struct.Struct("<I")


@dataclasses.dataclass(frozen=True)
class CodingSettings:
    """Everything the decoder needs to recompute the encoder's probabilities."""

    device: str  # "cpu" or "cuda"
    dtype: str  # "float32", "bfloat16" or "float16"
    chunk_size: int
    batch_size: int
    precision: int = 24
    fast: bool = False  # computed through model.decoder(..., fast=True)


@dataclasses.dataclass(frozen=True)
class Container:
    fingerprint: bytes
    settings: CodingSettings
    member_sizes: tuple[int, ...]
    original_digest: bytes
    streams: tuple[bytes, ...]

    @property
    def original_size(self) -> int:
        return sum(self.member_sizes)


def digest(members: list[bytes] | tuple[bytes, ...]) -> bytes:
    """BLAKE2b-64 of the members' concatenation: the end-to-end check."""
    hasher = hashlib.blake2b(digest_size=8)
    for member in members:
        hasher.update(member)
    return hasher.digest()


# ---- varints (unsigned LEB128) ----------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(blob: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(blob):
            raise OmnibyteError("truncated stream (header ends early)")
        byte = blob[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise OmnibyteError("corrupted stream (bad size field in header)")


def _read_list(blob: bytes, offset: int) -> tuple[list[int], int]:
    count, offset = _read_varint(blob, offset)
    if count > len(blob) - offset:  # every entry takes at least one byte
        raise OmnibyteError("corrupted or truncated stream (table longer than the stream)")
    values = []
    for _ in range(count):
        value, offset = _read_varint(blob, offset)
        values.append(value)
    return values, offset


# ---- writing / reading ------------------------------------------------------------

def pack(container: Container) -> bytes:
    settings = container.settings
    header = bytearray(MAGIC)
    header.append(VERSION)
    header += _FIXED.pack(
        container.fingerprint[:FINGERPRINT_BYTES], DEVICES.index(settings.device),
        DTYPES.index(settings.dtype), settings.precision, int(settings.fast), settings.chunk_size,
        settings.batch_size, container.original_size, container.original_digest)
    for table in (container.member_sizes, [len(s) for s in container.streams]):
        header += _varint(len(table)) + b"".join(_varint(value) for value in table)
    header += _CRC.pack(zlib.crc32(header))
    payload = b"".join(container.streams)
    return bytes(header) + payload + _CRC.pack(zlib.crc32(payload))


def unpack(blob: bytes) -> Container:
    """Parse and check a container; raise ``OmnibyteError`` on anything malformed."""
    blob = bytes(blob)
    if len(blob) < len(MAGIC) + 1 or blob[: len(MAGIC)] != MAGIC:
        raise OmnibyteError("not an omnibyte compressed stream (wrong magic bytes)")
    version = blob[len(MAGIC)]
    if version in RETIRED_VERSIONS:
        raise OmnibyteError(f"stream version {version} was made by {RETIRED_VERSIONS[version]}, whose decoder "
                            f"this build no longer has (it reads version {VERSION}); decompress it with "
                            f"{RETIRED_VERSIONS[version]}")
    if version != VERSION:
        raise OmnibyteError(f"unsupported omnibyte stream version {version} (this build reads {VERSION})")
    offset = len(MAGIC) + 1
    if len(blob) < offset + _FIXED.size:
        raise OmnibyteError("truncated stream (header ends early)")
    (fingerprint, device, dtype, precision, flags, chunk_size, batch_size, original_size,
     original_digest) = _FIXED.unpack_from(blob, offset)
    offset += _FIXED.size
    member_sizes, offset = _read_list(blob, offset)
    stream_sizes, offset = _read_list(blob, offset)
    if len(blob) < offset + _CRC.size:
        raise OmnibyteError("truncated stream (header ends early)")
    if _CRC.unpack_from(blob, offset)[0] != zlib.crc32(blob[:offset]):
        raise OmnibyteError("corrupted stream (header checksum mismatch)")
    offset += _CRC.size
    if device >= len(DEVICES) or dtype >= len(DTYPES) or flags > 1:
        raise OmnibyteError("corrupted stream (unknown coding settings)")
    if not MIN_PRECISION <= precision <= MAX_PRECISION or chunk_size < 1 or batch_size < 1:
        raise OmnibyteError("corrupted stream (invalid coding settings)")
    if sum(member_sizes) != original_size:
        raise OmnibyteError("corrupted stream (member sizes do not add up)")
    payload_end = offset + sum(stream_sizes)
    if len(blob) < payload_end + _CRC.size:
        raise OmnibyteError(f"truncated stream ({len(blob):,} bytes, header promises {payload_end + _CRC.size:,})")
    if len(blob) > payload_end + _CRC.size:
        raise OmnibyteError("corrupted stream (trailing bytes after the payload)")
    if _CRC.unpack_from(blob, payload_end)[0] != zlib.crc32(blob[offset:payload_end]):
        raise OmnibyteError("corrupted stream (payload checksum mismatch)")
    streams = []
    for size in stream_sizes:
        streams.append(blob[offset : offset + size])
        offset += size
    settings = CodingSettings(DEVICES[device], DTYPES[dtype], chunk_size, batch_size, precision, bool(flags))
    return Container(fingerprint, settings, tuple(member_sizes), original_digest, tuple(streams))
