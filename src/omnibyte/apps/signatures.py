"""File-format signatures: magic bytes plus header validation and exact lengths.

A magic number alone is weak evidence ("MZ" or "BM" occur every 64 KiB in random
bytes), so every signature comes with a validator that parses the header behind the
magic and checks that its fields are consistent (a RIFF header must name a form we
know, a BMP's declared sizes must add up, a PNG's IHDR must carry a valid CRC, ...).

Each signature can also ``measure`` the length of the file that starts at a given
offset by walking its structure (chunk lists, size fields, the end of a compressed
stream). Segmentation of concatenated streams uses those lengths as exact boundaries.
"""
from __future__ import annotations

import dataclasses
import lzma
import re
import struct
import zlib
from typing import Callable, Iterator


class InvalidHeader(Exception):
    """The bytes after a magic number are not a valid header; the message says why."""


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise InvalidHeader(reason)


def _unpack(layout: str, data: bytes, offset: int) -> tuple:
    """``struct.unpack_from`` whose short-read error reads as a truncated header."""
    try:
        return struct.unpack_from(layout, data, offset)
    except struct.error:
        raise InvalidHeader("truncated header") from None


@dataclasses.dataclass(frozen=True)
class FormatInfo:
    kind: str
    extension: str
    mime: str
    label: str


# Kinds recognised by signature. Content-based kinds (text, JSON, ...) live in detect.py.
FORMATS: dict[str, FormatInfo] = {info.kind: info for info in (
    FormatInfo("png", ".png", "image/png", "PNG image"),
    FormatInfo("jpeg", ".jpg", "image/jpeg", "JPEG image"),
    FormatInfo("gif", ".gif", "image/gif", "GIF image"),
    FormatInfo("bmp", ".bmp", "image/bmp", "BMP image"),
    FormatInfo("tiff", ".tiff", "image/tiff", "TIFF image"),
    FormatInfo("webp", ".webp", "image/webp", "WebP image"),
    FormatInfo("pnm", ".pnm", "image/x-portable-anymap", "Netpbm image"),
    FormatInfo("ras", ".ras", "image/x-sun-raster", "Sun raster image"),
    FormatInfo("sgi", ".sgi", "image/sgi", "SGI image"),
    FormatInfo("exr", ".exr", "image/x-exr", "OpenEXR image"),
    FormatInfo("wav", ".wav", "audio/wav", "WAV audio"),
    FormatInfo("aiff", ".aiff", "audio/aiff", "AIFF audio"),
    FormatInfo("au", ".au", "audio/basic", "Sun AU audio"),
    FormatInfo("midi", ".mid", "audio/midi", "Standard MIDI file"),
    FormatInfo("gzip", ".gz", "application/gzip", "gzip stream"),
    FormatInfo("xz", ".xz", "application/x-xz", "xz stream"),
    FormatInfo("zip", ".zip", "application/zip", "zip archive"),
    FormatInfo("tar", ".tar", "application/x-tar", "tar archive"),
    FormatInfo("elf", ".elf", "application/x-elf", "ELF executable"),
    FormatInfo("pe", ".exe", "application/vnd.microsoft.portable-executable", "PE executable"),
    FormatInfo("pdf", ".pdf", "application/pdf", "PDF document"),
)}


@dataclasses.dataclass(frozen=True)
class HeaderMatch:
    """A validated header of ``kind`` at ``offset``; ``evidence`` says what was checked."""

    kind: str
    offset: int
    evidence: tuple[str, ...]
    extension: str
    signature: "Signature" = dataclasses.field(repr=False, compare=False)

    def declared_length(self, data: bytes) -> int | None:
        """Length the structure claims, even past the end of ``data`` (None: unknown)."""
        try:
            length = self.signature.measure(data, self.offset)
        except (InvalidHeader, IndexError, ValueError):
            return None
        return length if length is not None and length > 0 else None

    def measure(self, data: bytes) -> int | None:
        """Length of the file starting at ``offset`` if its structure ends inside ``data``."""
        length = self.declared_length(data)
        if length is None or self.offset + length > len(data):
            return None
        return length


Check = Callable[[bytes, int], "tuple[str, tuple[str, ...], str | None]"]
Measure = Callable[[bytes, int], "int | None"]


@dataclasses.dataclass(frozen=True)
class Signature:
    """``magic`` at ``offset + magic_offset``; ``check`` raises InvalidHeader or returns
    (kind, evidence, extension override); ``measure`` returns the file length or None."""

    name: str
    magic: bytes
    check: Check
    measure: Measure
    magic_offset: int = 0

    def match(self, data: bytes, offset: int) -> HeaderMatch:
        """Validate the header at ``offset`` (raises InvalidHeader)."""
        at = offset + self.magic_offset
        _require(data[at:at + len(self.magic)] == self.magic, "magic number absent")
        try:
            kind, evidence, extension = self.check(data, offset)
        except IndexError:
            raise InvalidHeader("truncated header") from None
        return HeaderMatch(kind, offset, evidence, extension or FORMATS[kind].extension, self)


# ---- images ------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(data: bytes, offset: int):
    length, chunk_type = _unpack(">I4s", data, offset + 8)
    _require(chunk_type == b"IHDR" and length == 13, "PNG without a leading IHDR chunk")
    width, height, depth, colour = _unpack(">IIBB", data, offset + 16)
    _require(width > 0 and height > 0, "PNG with zero width or height")
    _require(depth in (1, 2, 4, 8, 16) and colour in (0, 2, 3, 4, 6), "PNG with invalid bit depth/colour type")
    (crc,) = _unpack(">I", data, offset + 29)
    _require(zlib.crc32(data[offset + 12:offset + 29]) == crc, "PNG IHDR CRC mismatch")
    return "png", (f"PNG signature + IHDR with valid CRC ({width}x{height}, {depth}-bit, colour type {colour})",), None


def _measure_png(data: bytes, offset: int) -> int | None:
    """Walk the chunk list up to and including IEND."""
    position = offset + 8
    while position + 12 <= len(data):
        length, chunk_type = _unpack(">I4s", data, position)
        if length > 2**31 - 1 or not chunk_type.isalpha():
            return None
        position += 12 + length
        if chunk_type == b"IEND":
            return position - offset
    return None


# Markers that may follow SOI directly: APPn, DQT, DHT, SOFn, COM, DRI.
JPEG_FIRST_MARKERS = set(range(0xE0, 0xF0)) | {0xDB, 0xC4, 0xFE, 0xDD} | set(range(0xC0, 0xC4))


def _check_jpeg(data: bytes, offset: int):
    marker = data[offset + 3]
    _require(marker in JPEG_FIRST_MARKERS, f"JPEG SOI followed by unexpected marker 0x{marker:02X}")
    (length,) = _unpack(">H", data, offset + 4)
    _require(length >= 2, "JPEG segment length below 2")
    detail = " JFIF" if data[offset + 6:offset + 10] == b"JFIF" else ""
    detail = " Exif" if data[offset + 6:offset + 10] == b"Exif" else detail
    return "jpeg", (f"JPEG SOI + marker 0x{marker:02X}{detail}",), None


def _skip_entropy_coded(data: bytes, position: int) -> int:
    """Index of the next real marker after entropy-coded scan data."""
    while True:
        position = data.index(b"\xff", position)
        following = data[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position += 1  # stuffed byte, restart marker or fill byte
            continue
        return position


def _measure_jpeg(data: bytes, offset: int) -> int | None:
    """Walk marker segments; after each SOS skip the scan data; stop at EOI."""
    position = offset + 2
    while True:
        if data[position] != 0xFF:
            return None
        while data[position + 1] == 0xFF:  # fill bytes
            position += 1
        marker = data[position + 1]
        if marker == 0xD9:
            return position + 2 - offset
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            position += 2
            continue
        (length,) = _unpack(">H", data, position + 2)
        position += 2 + length
        if marker == 0xDA:
            try:
                position = _skip_entropy_coded(data, position)
            except ValueError:
                return None


def _check_gif(data: bytes, offset: int):
    width, height = _unpack("<HH", data, offset + 6)
    _require(width > 0 and height > 0, "GIF with zero logical screen size")
    version = data[offset + 3:offset + 6].decode()
    return "gif", (f"GIF{version} header ({width}x{height})",), None


def _skip_sub_blocks(data: bytes, position: int) -> int:
    while (size := data[position]) != 0:
        position += 1 + size
    return position + 1


def _measure_gif(data: bytes, offset: int) -> int | None:
    """Walk extension and image blocks up to the 0x3B trailer."""
    flags = data[offset + 10]
    position = offset + 13
    if flags & 0x80:
        position += 3 * 2 ** ((flags & 7) + 1)
    while True:
        block = data[position]
        if block == 0x3B:
            return position + 1 - offset
        if block == 0x21:
            position = _skip_sub_blocks(data, position + 2)
        elif block == 0x2C:
            local_flags = data[position + 9]
            position += 10
            if local_flags & 0x80:
                position += 3 * 2 ** ((local_flags & 7) + 1)
            position = _skip_sub_blocks(data, position + 1)  # +1: LZW minimum code size
        else:
            return None


BMP_DIB_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
BMP_UNCOMPRESSED = {0, 3, 6}  # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS


def _check_bmp(data: bytes, offset: int):
    file_size, pixel_offset, dib_size = _unpack("<I4xII", data, offset + 2)
    _require(dib_size in BMP_DIB_HEADER_SIZES, f"BMP with unknown DIB header size {dib_size}")
    if dib_size == 12:
        width, height, planes, bits = _unpack("<HHHH", data, offset + 18)
        compression = 0
    else:
        width, height, planes, bits, compression = _unpack("<iiHHI", data, offset + 18)
    _require(planes == 1, "BMP planes field is not 1")
    _require(bits in (1, 4, 8, 16, 24, 32), f"BMP with invalid bit count {bits}")
    _require(width > 0 and height != 0, "BMP with zero width or height")
    _require(14 + dib_size <= pixel_offset <= file_size, "BMP pixel offset outside the declared file")
    if compression in BMP_UNCOMPRESSED:
        row_bytes = (width * bits + 31) // 32 * 4
        _require(pixel_offset + row_bytes * abs(height) <= file_size,
                 "BMP declared file size too small for its pixels")
    evidence = f"BMP {width}x{abs(height)} {bits}-bit, sizes consistent ({file_size} bytes declared)"
    return "bmp", (evidence,), None


def _measure_bmp(data: bytes, offset: int) -> int:
    return _unpack("<I", data, offset + 2)[0]


def _check_tiff(data: bytes, offset: int):
    endian = "<" if data[offset] == 0x49 else ">"
    (ifd_offset,) = _unpack(endian + "I", data, offset + 4)
    _require(ifd_offset >= 8, "TIFF first IFD offset inside the header")
    (entries,) = _unpack(endian + "H", data, offset + ifd_offset)
    _require(0 < entries < 1000, "TIFF first IFD has an implausible entry count")
    return "tiff", (f"TIFF header ({'little' if endian == '<' else 'big'}-endian), IFD with {entries} entries",), None


TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
TIFF_STRIP_TAGS = ((273, 279), (324, 325))  # (StripOffsets, StripByteCounts), (TileOffsets, TileByteCounts)


def _tiff_values(data: bytes, offset: int, endian: str, entry: int) -> list[int]:
    """The integer values of one IFD entry (inline or at their offset)."""
    value_type, count = _unpack(endian + "HI", data, entry + 2)
    size = TIFF_TYPE_SIZES.get(value_type, 1)
    _require(count < 1 << 20, "TIFF entry with an implausible count")
    where = entry + 8 if size * count <= 4 else offset + _unpack(endian + "I", data, entry + 8)[0]
    code = {1: "B", 3: "H", 4: "I"}.get(value_type)
    return list(_unpack(f"{endian}{count}{code}", data, where)) if code else []


def _measure_tiff(data: bytes, offset: int) -> int | None:
    """Largest end among the IFDs, their out-of-line values and the strips/tiles they point to."""
    endian = "<" if data[offset] == 0x49 else ">"
    (ifd,) = _unpack(endian + "I", data, offset + 4)
    end, seen = 8, set()
    while ifd and ifd not in seen and len(seen) < 64:
        seen.add(ifd)
        (entries,) = _unpack(endian + "H", data, offset + ifd)
        end = max(end, ifd + 2 + 12 * entries + 4)
        tags = {}
        for index in range(entries):
            entry = offset + ifd + 2 + 12 * index
            tag, value_type, count = _unpack(endian + "HHI", data, entry)
            size = TIFF_TYPE_SIZES.get(value_type, 1) * count
            if size > 4:
                end = max(end, _unpack(endian + "I", data, entry + 8)[0] + size)
            tags[tag] = entry
        for offsets_tag, counts_tag in TIFF_STRIP_TAGS:
            if offsets_tag in tags and counts_tag in tags:
                starts = _tiff_values(data, offset, endian, tags[offsets_tag])
                counts = _tiff_values(data, offset, endian, tags[counts_tag])
                end = max([end] + [start + count for start, count in zip(starts, counts)])
        (ifd,) = _unpack(endian + "I", data, offset + ifd + 2 + 12 * entries)
    return end


PNM_HEADER = re.compile(rb"P([1-6])(?:\s|#[^\n]*\n)+(\d+)(?:\s|#[^\n]*\n)+(\d+)")
PNM_MAXVAL = re.compile(rb"(?:\s|#[^\n]*\n)+(\d+)")
PNM_NAMES = {1: ("PBM", ".pbm"), 2: ("PGM", ".pgm"), 3: ("PPM", ".ppm"),
             4: ("PBM", ".pbm"), 5: ("PGM", ".pgm"), 6: ("PPM", ".ppm")}


def _pnm_header(data: bytes, offset: int) -> tuple[int, int, int, int, int]:
    """(variant, width, height, maxval, offset of the first sample) of a Netpbm header."""
    header = PNM_HEADER.match(data, offset)
    _require(header is not None, "P1..P6 without width and height")
    variant, width, height = (int(group) for group in header.groups())
    position, maxval = header.end(), 1
    if variant not in (1, 4):
        found = PNM_MAXVAL.match(data, position)
        _require(found is not None, "Netpbm header without maxval")
        position, maxval = found.end(), int(found.group(1))
    _require(0 < width < 1 << 16 and 0 < height < 1 << 16 and 0 < maxval < 1 << 16,
             "Netpbm header with implausible width/height/maxval")
    _require(position < len(data) and data[position] in b" \t\r\n", "Netpbm header not ended by whitespace")
    return variant, width, height, maxval, position + 1


def _check_pnm(data: bytes, offset: int):
    variant, width, height, maxval, _ = _pnm_header(data, offset)
    name, extension = PNM_NAMES[variant]
    encoding = "ASCII" if variant <= 3 else "binary"
    return "pnm", (f"Netpbm {name} ({encoding}) {width}x{height}, maxval {maxval}",), extension


PNM_ASCII_SAMPLE = {1: re.compile(rb"\s*[01]"), 2: re.compile(rb"\s*\d+"), 3: re.compile(rb"\s*\d+")}


def _measure_pnm(data: bytes, offset: int) -> int | None:
    variant, width, height, maxval, position = _pnm_header(data, offset)
    channels = 3 if variant in (3, 6) else 1
    if variant == 4:
        return position + (width + 7) // 8 * height - offset
    if variant >= 5:
        return position + width * height * channels * (2 if maxval > 255 else 1) - offset
    sample = PNM_ASCII_SAMPLE[variant]
    for _ in range(width * height * channels):  # ASCII: walk the samples
        found = sample.match(data, position)
        if found is None:
            return None
        position = found.end()
    if data[position:position + 1] == b"\n":
        position += 1
    return position - offset


def _check_ras(data: bytes, offset: int):
    width, height, depth, length, raster_type, map_type, map_length = _unpack(">7I", data, offset + 4)
    _require(width > 0 and height > 0, "Sun raster with zero width or height")
    _require(depth in (1, 8, 24, 32), f"Sun raster with invalid depth {depth}")
    _require(raster_type <= 5 and map_type <= 2, "Sun raster with unknown type or colour-map type")
    _require(map_type != 0 or map_length == 0, "Sun raster with a colour map of type none")
    return "ras", (f"Sun raster {width}x{height}, {depth}-bit, type {raster_type}",), None


def _measure_ras(data: bytes, offset: int) -> int:
    width, height, depth, length, raster_type, _, map_length = _unpack(">7I", data, offset + 4)
    if length == 0 and raster_type != 2:  # old files leave the length out; rows pad to 16 bits
        length = (width * depth + 15) // 16 * 2 * height
    return 32 + map_length + length


def _check_sgi(data: bytes, offset: int):
    storage, bytes_per_channel, dimension, width, height, channels = _unpack(">BBHHHH", data, offset + 2)
    _require(storage in (0, 1) and bytes_per_channel in (1, 2), "SGI with invalid storage or sample size")
    _require(dimension in (1, 2, 3) and width > 0 and height > 0 and channels > 0,
             "SGI with invalid dimension or size")
    _require(len(data) >= offset + 512, "truncated header")
    compression = "RLE" if storage else "uncompressed"
    return "sgi", (f"SGI image {width}x{height}x{channels} ({compression})",), None


def _measure_sgi(data: bytes, offset: int) -> int:
    storage, bytes_per_channel, _, width, height, channels = _unpack(">BBHHHH", data, offset + 2)
    if storage == 0:
        return 512 + width * height * channels * bytes_per_channel
    rows = height * channels  # RLE: tables of row starts and lengths follow the header
    starts = _unpack(f">{rows}I", data, offset + 512)
    lengths = _unpack(f">{rows}I", data, offset + 512 + 4 * rows)
    return max([512 + 8 * rows] + [start + length for start, length in zip(starts, lengths)])


def _check_exr(data: bytes, offset: int):
    version, flags = data[offset + 4], data[offset + 5]
    _require(version == 2 and flags & 0xE1 == 0, "OpenEXR with unknown version or flags")
    _require(data[offset + 8:offset + 16].rstrip(b"\0").isalpha(), "OpenEXR without a header attribute")
    return "exr", ("OpenEXR version 2 header",), None


def _measure_unknown(data: bytes, offset: int) -> None:
    """The format has no cheap way to find its end."""
    return None


# ---- audio -------------------------------------------------------------------------

def _riff_chunks(data: bytes, position: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(chunk id, body offset, body length) of the chunks in [position, end)."""
    while position + 8 <= end:
        chunk_id, length = _unpack("<4sI", data, position)
        yield chunk_id, position + 8, length
        position += 8 + length + (length & 1)


def _check_riff(data: bytes, offset: int):
    size, form = _unpack("<I4s", data, offset + 4)
    if form == b"WEBP":
        chunk = data[offset + 12:offset + 16]
        _require(chunk in (b"VP8 ", b"VP8L", b"VP8X"), "RIFF/WEBP without a VP8 chunk")
        return "webp", (f"RIFF/WEBP container with {chunk.decode().strip()} chunk",), None
    _require(form == b"WAVE", f"RIFF container of form {form!r}, not WAVE")
    end = min(len(data), offset + 8 + size)
    for chunk_id, body, _ in _riff_chunks(data, offset + 12, end):
        if chunk_id == b"fmt ":
            tag, channels, rate, byte_rate, block_align, bits = _unpack("<HHIIHH", data, body)
            _require(channels > 0 and rate > 0, "WAVE fmt chunk with zero channels or rate")
            if tag == 1:
                _require(block_align == channels * ((bits + 7) // 8) and byte_rate == rate * block_align,
                         "WAVE PCM fmt chunk with inconsistent block align / byte rate")
            return "wav", (f"RIFF/WAVE fmt: tag {tag}, {channels} ch, {rate} Hz, {bits}-bit",), None
    raise InvalidHeader("RIFF/WAVE without a fmt chunk")


def _measure_riff(data: bytes, offset: int) -> int:
    (size,) = _unpack("<I", data, offset + 4)
    return 8 + size + (size & 1)


def _check_form(data: bytes, offset: int):
    size, form = _unpack(">I4s", data, offset + 4)
    _require(form in (b"AIFF", b"AIFC"), f"IFF FORM of type {form!r}, not AIFF/AIFC")
    position, end = offset + 12, min(len(data), offset + 8 + size)
    while position + 8 <= end:
        chunk_id, length = _unpack(">4sI", data, position)
        if chunk_id == b"COMM":
            channels, _, bits = _unpack(">HIH", data, position + 8)
            _require(channels > 0 and 0 < bits <= 32, "AIFF COMM chunk with invalid channels/sample size")
            extension = ".aifc" if form == b"AIFC" else None
            return "aiff", (f"IFF FORM/{form.decode()} COMM: {channels} ch, {bits}-bit",), extension
        position += 8 + length + (length & 1)
    raise InvalidHeader("AIFF without a COMM chunk")


def _measure_form(data: bytes, offset: int) -> int:
    (size,) = _unpack(">I", data, offset + 4)
    return 8 + size + (size & 1)


AU_ENCODINGS = {1: "mu-law", 2: "8-bit PCM", 3: "16-bit PCM", 4: "24-bit PCM", 5: "32-bit PCM",
                6: "float", 7: "double", 23: "G.721", 25: "G.723", 27: "A-law"}
AU_UNKNOWN_SIZE = 0xFFFFFFFF


def _check_au(data: bytes, offset: int):
    header_size, data_size, encoding, rate, channels = _unpack(">IIIII", data, offset + 4)
    _require(24 <= header_size <= 4096, "AU header size outside 24..4096")
    _require(encoding in AU_ENCODINGS, f"AU with unknown encoding {encoding}")
    _require(rate > 0 and 0 < channels <= 64, "AU with invalid rate or channel count")
    return "au", (f"Sun AU: {AU_ENCODINGS[encoding]}, {channels} ch, {rate} Hz",), None


def _measure_au(data: bytes, offset: int) -> int | None:
    header_size, data_size = _unpack(">II", data, offset + 4)
    return None if data_size == AU_UNKNOWN_SIZE else header_size + data_size


def _check_midi(data: bytes, offset: int):
    length, midi_format, tracks, division = _unpack(">IHHH", data, offset + 4)
    _require(length == 6, "MThd chunk length is not 6")
    _require(midi_format in (0, 1, 2) and tracks > 0, "MIDI with invalid format or no tracks")
    _require(midi_format != 0 or tracks == 1, "MIDI format 0 with more than one track")
    _require(division != 0, "MIDI with zero time division")
    (first_track,) = _unpack(">4s", data, offset + 14)
    _require(first_track.isalpha(), "MIDI header not followed by a chunk")
    return "midi", (f"MThd: SMF format {midi_format}, {tracks} track(s), division {division}",), None


def _measure_midi(data: bytes, offset: int) -> int | None:
    """Header chunk plus as many MTrk chunks as the header announces."""
    (tracks,) = _unpack(">H", data, offset + 10)
    position, seen = offset + 14, 0
    while seen < tracks:
        chunk_id, length = _unpack(">4sI", data, position)
        if not chunk_id.isalpha():
            return None
        seen += chunk_id == b"MTrk"
        position += 8 + length
    return position - offset


# ---- compressed streams and archives -----------------------------------------------

DECOMPRESS_INPUT_CHUNK = 1 << 16
DECOMPRESS_OUTPUT_CAP = 1 << 20  # never hold more than this much decompressed output


def _check_gzip(data: bytes, offset: int):
    method, flags = data[offset + 2], data[offset + 3]
    _require(method == 8, "gzip with a compression method other than deflate")
    _require(flags & 0xE0 == 0, "gzip with reserved flag bits set")
    _require(data[offset + 8] in (0, 2, 4), "gzip with invalid extra flags")
    _require(data[offset + 9] <= 13 or data[offset + 9] == 255, "gzip with unknown operating system byte")
    evidence = ["gzip header (deflate)"]
    extension = None
    if flags & 0x08:  # FNAME: a zero-terminated original file name (after FEXTRA, if any)
        name_start = offset + 10
        if flags & 0x04:
            name_start += 2 + _unpack("<H", data, name_start)[0]
        name_end = data.find(b"\0", name_start, name_start + 1024)
        if name_end > 0:
            evidence.append(f"original name {data[name_start:name_end].decode('latin-1')!r}")
    if _gzip_holds_tar(data, offset):
        evidence.append("contains a tar archive")
        extension = ".tar.gz"
    return "gzip", tuple(evidence), extension


def _gzip_holds_tar(data: bytes, offset: int) -> bool:
    try:
        head = zlib.decompressobj(wbits=31).decompress(data[offset:offset + DECOMPRESS_INPUT_CHUNK], 512)
    except zlib.error:
        return False
    return _is_tar_header(head, 0)


def _measure_gzip(data: bytes, offset: int) -> int | None:
    """Inflate (discarding output) until the end of the deflate stream and its trailer."""
    inflater = zlib.decompressobj(wbits=31)
    position = offset
    try:
        while not inflater.eof and position < len(data):
            pending = data[position:position + DECOMPRESS_INPUT_CHUNK]
            position += len(pending)
            while pending and not inflater.eof:
                inflater.decompress(pending, DECOMPRESS_OUTPUT_CAP)
                pending = inflater.unconsumed_tail
    except zlib.error:
        return None
    if not inflater.eof:
        return None
    return position - len(inflater.unused_data) - offset


def _check_xz(data: bytes, offset: int):
    flags = data[offset + 6:offset + 8]
    (crc,) = _unpack("<I", data, offset + 8)
    _require(len(flags) == 2 and flags[0] == 0 and flags[1] & 0xF0 == 0, "xz with invalid stream flags")
    _require(zlib.crc32(flags) == crc, "xz stream-flags CRC mismatch")
    if _xz_holds_tar(data, offset):
        return "xz", ("xz stream header with valid CRC", "contains a tar archive"), ".tar.xz"
    return "xz", ("xz stream header with valid CRC",), None


def _xz_holds_tar(data: bytes, offset: int) -> bool:
    try:
        head = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(
            data[offset:offset + DECOMPRESS_INPUT_CHUNK], TAR_BLOCK)
    except lzma.LZMAError:
        return False
    return _is_tar_header(head, 0)


def _measure_xz(data: bytes, offset: int) -> int | None:
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    position = offset
    try:
        while not decompressor.eof and position < len(data):
            chunk = data[position:position + DECOMPRESS_INPUT_CHUNK]
            position += len(chunk)
            decompressor.decompress(chunk, DECOMPRESS_OUTPUT_CAP)
            while not decompressor.needs_input and not decompressor.eof:
                decompressor.decompress(b"", DECOMPRESS_OUTPUT_CAP)
    except lzma.LZMAError:
        return None
    if not decompressor.eof:
        return None
    return position - len(decompressor.unused_data) - offset


ZIP_METHODS = {0: "stored", 8: "deflate", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstd", 95: "xz",
               98: "ppmd", 99: "AES"}
ZIP_END_RECORD = b"PK\x05\x06"


def _check_zip(data: bytes, offset: int):
    version, _, method = _unpack("<HHH", data, offset + 4)
    name_length, extra_length = _unpack("<HH", data, offset + 26)
    _require(version <= 100, "zip entry needing an implausible version")
    _require(method in ZIP_METHODS, f"zip entry with unknown method {method}")
    _require(0 < name_length <= 4096, "zip entry with an implausible name length")
    name = data[offset + 30:offset + 30 + name_length]
    _require(len(name) == name_length, "truncated header")
    try:
        decoded = name.decode("utf-8")
    except UnicodeDecodeError:
        decoded = name.decode("cp437")
    _require(decoded.isprintable(), "zip entry name is not printable")
    return "zip", (f"zip local header: first entry {decoded!r} ({ZIP_METHODS[method]})",), None


def _measure_zip(data: bytes, offset: int) -> int | None:
    """End of the first end-of-central-directory record whose offsets fit this archive."""
    position = offset
    while (position := data.find(ZIP_END_RECORD, position + 1)) >= 0:
        directory_size, directory_offset, comment_length = _unpack("<IIH", data, position + 12)
        if directory_offset + directory_size == position - offset:
            return position + 22 + comment_length - offset
    return None


TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # archivers pad the archive to whole records of zeros


def _tar_checksum_ok(block: bytes) -> bool:
    field = block[148:156].split(b"\0")[0].strip()
    try:
        declared = int(field, 8)
    except ValueError:
        return False
    return declared == sum(block[:148]) + 8 * 0x20 + sum(block[156:512])


def _is_tar_header(data: bytes, offset: int) -> bool:
    block = data[offset:offset + TAR_BLOCK]
    return len(block) == TAR_BLOCK and block[257:262] == b"ustar" and _tar_checksum_ok(block)


def _check_tar(data: bytes, offset: int):
    block = data[offset:offset + TAR_BLOCK]
    _require(len(block) == TAR_BLOCK, "truncated header")
    _require(_tar_checksum_ok(block), "tar header checksum mismatch")
    name = block[:100].split(b"\0")[0].decode("utf-8", "replace")
    _require(name != "", "tar header without a member name")
    return "tar", (f"ustar header with valid checksum, first member {name!r}",), None


def _tar_member_size(block: bytes) -> int:
    field = block[124:136]
    if field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0")[0].strip() or b"0", 8)


def _measure_tar(data: bytes, offset: int) -> int | None:
    """Walk member headers to the two zero blocks that end the archive, plus padding."""
    position = offset
    zero_block = bytes(TAR_BLOCK)
    while position + TAR_BLOCK <= len(data):
        block = data[position:position + TAR_BLOCK]
        if block == zero_block:
            if data[position + TAR_BLOCK:position + 2 * TAR_BLOCK] != zero_block:
                return None
            end = position + 2 * TAR_BLOCK
            while (end - offset) % TAR_RECORD and data[end:end + TAR_BLOCK] == zero_block:
                end += TAR_BLOCK
            return end - offset
        if not _tar_checksum_ok(block):
            return None
        size = _tar_member_size(block)
        position += TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK
    return None


# ---- executables and documents -----------------------------------------------------

ELF_TYPES = {1: "relocatable", 2: "executable", 3: "shared object", 4: "core"}


def _elf_layout(data: bytes, offset: int) -> tuple[str, dict[str, int]]:
    elf_class, encoding, version = data[offset + 4], data[offset + 5], data[offset + 6]
    _require(elf_class in (1, 2) and encoding in (1, 2) and version == 1, "ELF ident with invalid class/encoding/version")
    endian = "<" if encoding == 1 else ">"
    word = "Q" if elf_class == 2 else "I"
    names = ("type", "machine", "version", "entry", "phoff", "shoff", "flags", "ehsize",
             "phentsize", "phnum", "shentsize", "shnum")
    values = _unpack(f"{endian}HHI{word}{word}{word}IHHHHH", data, offset + 16)
    return endian + word, dict(zip(names, values))


def _check_elf(data: bytes, offset: int):
    _, header = _elf_layout(data, offset)
    bits = 64 if data[offset + 4] == 2 else 32
    _require(header["type"] in ELF_TYPES, "ELF with unknown object type")
    _require(header["ehsize"] == (64 if bits == 64 else 52), "ELF header size field inconsistent with its class")
    evidence = f"ELF{bits} {ELF_TYPES[header['type']]}, machine {header['machine']}, {header['shnum']} sections"
    return "elf", (evidence,), None


def _measure_elf(data: bytes, offset: int) -> int | None:
    """Largest end among the section table, the sections and the program segments."""
    layout, header = _elf_layout(data, offset)
    endian, word = layout[0], layout[1]
    end = header["shoff"] + header["shnum"] * header["shentsize"]
    for index in range(header["shnum"]):
        base = offset + header["shoff"] + index * header["shentsize"]
        (section_type,) = _unpack(endian + "I", data, base + 4)
        section_offset, size = _unpack(endian + word * 2, data, base + (24 if word == "Q" else 16))
        if section_type != 8:  # SHT_NOBITS occupies no file space
            end = max(end, section_offset + size)
    for index in range(header["phnum"]):
        base = offset + header["phoff"] + index * header["phentsize"]
        if word == "Q":
            segment_offset, file_size = _unpack(f"{endian}8xQ16xQ", data, base)
        else:
            segment_offset, file_size = _unpack(f"{endian}4xI8xI", data, base)
        end = max(end, segment_offset + file_size)
    return end


PE_MACHINES = {0x14C: "x86", 0x8664: "x86-64", 0x1C0: "ARM", 0x1C4: "ARMv7", 0xAA64: "ARM64", 0x200: "IA-64"}


def _pe_header_offset(data: bytes, offset: int) -> int:
    (pe_offset,) = _unpack("<I", data, offset + 0x3C)
    _require(0x40 <= pe_offset < 1 << 20, "MZ header without a plausible PE offset")
    _require(data[offset + pe_offset:offset + pe_offset + 4] == b"PE\0\0", "MZ header without a PE signature")
    return offset + pe_offset


def _check_pe(data: bytes, offset: int):
    pe = _pe_header_offset(data, offset)
    machine, sections, _, _, _, optional_size = _unpack("<HHIIIH", data, pe + 4)
    _require(machine in PE_MACHINES, f"PE with unknown machine 0x{machine:X}")
    _require(optional_size > 0, "PE image without an optional header")
    (magic,) = _unpack("<H", data, pe + 24)
    _require(magic in (0x10B, 0x20B), "PE optional header with invalid magic")
    flavour = "PE32+" if magic == 0x20B else "PE32"
    return "pe", (f"MZ + PE signature: {flavour} {PE_MACHINES[machine]}, {sections} section(s)",), None


def _measure_pe(data: bytes, offset: int) -> int | None:
    """End of the last section's raw data, or of the attached certificate table."""
    pe = _pe_header_offset(data, offset)
    sections, optional_size = _unpack("<H12xH", data, pe + 6)
    (magic,) = _unpack("<H", data, pe + 24)
    (end,) = _unpack("<I", data, pe + 24 + 60)  # SizeOfHeaders
    table = pe + 24 + optional_size
    for index in range(sections):
        raw_size, raw_offset = _unpack("<II", data, table + 40 * index + 16)
        end = max(end, raw_offset + raw_size)
    directories = pe + 24 + (112 if magic == 0x20B else 96)
    if optional_size >= directories - pe - 24 + 40:  # directory 4 (certificates) uses file offsets
        cert_offset, cert_size = _unpack("<II", data, directories + 32)
        end = max(end, cert_offset + cert_size)
    return end


PDF_VERSION = re.compile(rb"%PDF-(\d\.\d)")
PDF_END = re.compile(rb"%%EOF[ \t]*(\r\n|\r|\n)?")
PDF_UPDATE_FOLLOWS = re.compile(rb"\s*(\d+\s+\d+\s+obj\b|xref\b)")


PDF_FIRST_OBJECT = re.compile(rb"\d+\s+\d+\s+obj\b")
PDF_HEAD_SPAN = 4096  # a real PDF's first indirect object follows its header closely


def _check_pdf(data: bytes, offset: int):
    version = PDF_VERSION.match(data, offset)
    _require(version is not None, "%PDF- without a version number")
    # "%PDF-1.7" also occurs in prose about PDF; a real file has objects right after it
    _require(PDF_FIRST_OBJECT.search(data, version.end(), version.end() + PDF_HEAD_SPAN) is not None,
             "%PDF- header without an indirect object after it")
    return "pdf", (f"%PDF-{version.group(1).decode()} header followed by objects",), None


def _measure_pdf(data: bytes, offset: int) -> int | None:
    """Through the last %%EOF of the chain of incremental updates."""
    end = None
    position = offset
    while (found := PDF_END.search(data, position)) is not None:
        end = found.end()
        if not PDF_UPDATE_FOLLOWS.match(data, end):
            break
        position = end
    return None if end is None else end - offset


# ---- the table ----------------------------------------------------------------------

SIGNATURES: tuple[Signature, ...] = (
    Signature("PNG", PNG_MAGIC, _check_png, _measure_png),
    Signature("JPEG", b"\xff\xd8\xff", _check_jpeg, _measure_jpeg),
    Signature("GIF87a", b"GIF87a", _check_gif, _measure_gif),
    Signature("GIF89a", b"GIF89a", _check_gif, _measure_gif),
    Signature("BMP", b"BM", _check_bmp, _measure_bmp),
    Signature("TIFF", b"II*\0", _check_tiff, _measure_tiff),
    Signature("TIFF", b"MM\0*", _check_tiff, _measure_tiff),
    *(Signature("Netpbm", b"P" + bytes([digit]), _check_pnm, _measure_pnm) for digit in b"123456"),
    Signature("Sun raster", b"\x59\xa6\x6a\x95", _check_ras, _measure_ras),
    Signature("SGI", b"\x01\xda", _check_sgi, _measure_sgi),
    Signature("OpenEXR", b"v/1\x01", _check_exr, _measure_unknown),
    Signature("RIFF", b"RIFF", _check_riff, _measure_riff),
    Signature("IFF", b"FORM", _check_form, _measure_form),
    Signature("AU", b".snd", _check_au, _measure_au),
    Signature("MIDI", b"MThd", _check_midi, _measure_midi),
    Signature("gzip", b"\x1f\x8b", _check_gzip, _measure_gzip),
    Signature("xz", b"\xfd7zXZ\0", _check_xz, _measure_xz),
    Signature("zip", b"PK\x03\x04", _check_zip, _measure_zip),
    Signature("tar", b"ustar", _check_tar, _measure_tar, magic_offset=257),
    Signature("ELF", b"\x7fELF", _check_elf, _measure_elf),
    Signature("MZ", b"MZ", _check_pe, _measure_pe),
    Signature("PDF", b"%PDF-", _check_pdf, _measure_pdf),
)


def match_at(data: bytes, offset: int = 0) -> tuple[HeaderMatch | None, list[str]]:
    """The first signature whose header validates at ``offset``, and the reasons the
    others whose magic was present were rejected (evidence for the caller)."""
    rejected: list[str] = []
    for signature in SIGNATURES:
        start = offset + signature.magic_offset
        if data[start:start + len(signature.magic)] != signature.magic:
            continue
        try:
            return signature.match(data, offset), rejected
        except InvalidHeader as reason:
            rejected.append(f"{signature.name} magic but {reason}")
    return None, rejected


def find_headers(data: bytes) -> list[HeaderMatch]:
    """Every valid header anywhere in ``data``, sorted by offset."""
    matches = []
    for signature in SIGNATURES:
        position = data.find(signature.magic)
        while position >= 0:
            offset = position - signature.magic_offset
            if offset >= 0:
                try:
                    matches.append(signature.match(data, offset))
                except InvalidHeader:
                    pass
            position = data.find(signature.magic, position + 1)
    return sorted(matches, key=lambda match: match.offset)
