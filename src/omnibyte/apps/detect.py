"""What kind of data a byte string holds: signatures, byte statistics, text analysis, surprisal.

Evidence is gathered in order of strength:

1. a format signature whose header validates (signatures.py) names the kind outright;
   its measured length tells whether the data is complete, truncated or followed by more;
2. byte statistics over the first 64 KiB plus a few samples further in (histogram,
   printable ratio, UTF-8 validity, line structure, entropy over windows) separate text
   from binary, and uniform-looking binary (random or encrypted) from structured binary;
3. text is sub-classified by parsing (JSON, XML) and by per-line scores (source code,
   ABC music notation, markup, prose) that segment.py reuses to split mixed text;
4. with a model, its surprisal (bits per byte over a prefix) is added as evidence and
   separates random bytes (> 7.5 bits/byte) from structured binary it has learnt.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import numpy as np

from omnibyte.apps.signatures import FORMATS, FormatInfo, HeaderMatch, match_at

# Content kinds: recognised by analysis rather than by a signature.
CONTENT_KINDS: dict[str, FormatInfo] = {info.kind: info for info in (
    FormatInfo("text", ".txt", "text/plain", "text"),
    FormatInfo("code", ".txt", "text/x-source", "source code"),
    FormatInfo("html", ".html", "text/html", "HTML document"),
    FormatInfo("xml", ".xml", "application/xml", "XML document"),
    FormatInfo("json", ".json", "application/json", "JSON"),
    FormatInfo("abc", ".abc", "text/vnd.abc", "ABC music notation"),
    FormatInfo("xbm", ".xbm", "image/x-xbitmap", "X bitmap (C source)"),
    FormatInfo("random", ".bin", "application/octet-stream", "random or encrypted-looking bytes"),
    FormatInfo("binary", ".bin", "application/octet-stream", "unknown binary"),
    FormatInfo("empty", "", "application/x-empty", "empty"),
)}
KINDS: dict[str, FormatInfo] = {**FORMATS, **CONTENT_KINDS}
TEXT_KINDS = frozenset({"text", "code", "html", "xml", "json", "abc", "xbm"})

HEAD_BYTES = 1 << 16  # analyse the first 64 KiB ...
SAMPLE_COUNT, SAMPLE_BYTES = 4, 1 << 12  # ... plus a few 4 KiB samples from the rest
ENTROPY_WINDOW = 1024
LINE_SAMPLE_CHARS = 1 << 14  # per-line text scores are Python-speed: the first 16 K characters suffice
MEASURE_LIMIT = 1 << 22  # walking a structure to its end may mean inflating it: skip above 4 MiB
SURPRISAL_PREFIX = 2048
RANDOM_BITS_PER_BYTE = 7.5


@dataclasses.dataclass
class Detection:
    """The detected kind of a byte string, how sure, and why."""

    kind: str
    confidence: float
    evidence: list[Any]
    extension: str
    mime: str
    label: str
    size: int = 0
    model_bits_per_byte: float | None = None  # the model's mean surprisal, when one was given

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """The strongest piece of evidence as one short line."""
        first = self.evidence[0] if self.evidence else ""
        return first if isinstance(first, str) else json.dumps(first)


def make_detection(kind: str, confidence: float, evidence: list[Any], size: int,
                   extension: str | None = None) -> Detection:
    info = KINDS[kind]
    return Detection(kind, round(min(max(confidence, 0.0), 1.0), 3), evidence,
                     extension if extension is not None else info.extension, info.mime, info.label, size)


# ---- byte statistics ------------------------------------------------------------------

TEXT_CONTROLS = np.zeros(256, dtype=bool)
TEXT_CONTROLS[[9, 10, 11, 12, 13, 27]] = True  # tab, newlines, form feed, escape
PRINTABLE_ASCII = np.zeros(256, dtype=bool)
PRINTABLE_ASCII[0x20:0x7F] = True
TEXT_BYTES = PRINTABLE_ASCII | TEXT_CONTROLS


@dataclasses.dataclass(frozen=True)
class ByteProfile:
    """Histogram-level statistics of a sample of the data."""

    size: int  # bytes analysed
    entropy: float  # Miller-Madow-corrected Shannon entropy, bits/byte
    window_entropy: tuple[float, float]  # (min, max) over full ENTROPY_WINDOW windows
    chi_square: float  # against the uniform distribution; about 255 +- 23 for random bytes
    text_ratio: float  # printable ASCII plus tab/newline/form feed/escape
    control_ratio: float  # other bytes below 0x20, and DEL
    nul_ratio: float
    high_ratio: float  # bytes >= 0x80
    utf8_valid: bool
    mean_line: float
    max_line: int

    @property
    def looks_uniform(self) -> bool:
        """Histogram consistent with uniform bytes (5 sigma), in every window."""
        limit = 255 + 5 * math.sqrt(2 * 255)
        windows_flat = self.size < ENTROPY_WINDOW or self.window_entropy[0] > 7.0
        return self.size >= 32 and self.chi_square < limit and windows_flat

    @property
    def looks_like_text(self) -> bool:
        if self.nul_ratio > 0 or self.control_ratio > 0.002:
            return False
        return self.utf8_valid or self.high_ratio < 0.1  # the latter: 8-bit text (latin-1 and kin)


def entropy_bits(counts: np.ndarray) -> float:
    """Miller-Madow-corrected entropy (bits) of a histogram; small samples are not biased low."""
    total = counts.sum()
    if total == 0:
        return 0.0
    probabilities = counts[counts > 0] / total
    plug_in = float(-(probabilities * np.log2(probabilities)).sum())
    return plug_in + (len(probabilities) - 1) / (2 * float(total) * math.log(2))


def analysis_pieces(data: bytes) -> list[bytes]:
    """The head of ``data`` plus evenly spaced samples of the rest (large inputs only)."""
    if len(data) <= HEAD_BYTES + SAMPLE_COUNT * SAMPLE_BYTES:
        return [data]
    rest = len(data) - HEAD_BYTES - SAMPLE_BYTES
    starts = [HEAD_BYTES + rest * (index + 1) // SAMPLE_COUNT for index in range(SAMPLE_COUNT)]
    return [data[:HEAD_BYTES]] + [data[start:start + SAMPLE_BYTES] for start in starts]


def utf8_valid(piece: bytes, cut_start: bool, cut_end: bool) -> bool:
    """Whether ``piece`` is UTF-8, forgiving characters cut at the piece's edges."""
    if cut_start:
        skip = 0
        while skip < 3 and skip < len(piece) and piece[skip] & 0xC0 == 0x80:
            skip += 1
        piece = piece[skip:]
    try:
        piece.decode("utf-8")
        return True
    except UnicodeDecodeError as error:
        return cut_end and error.reason == "unexpected end of data" and error.start >= len(piece) - 3


def byte_profile(data: bytes) -> ByteProfile:
    pieces = analysis_pieces(data)
    arrays = [np.frombuffer(piece, dtype=np.uint8) for piece in pieces]
    counts = sum(np.bincount(array, minlength=256) for array in arrays)
    size = int(counts.sum())
    # full windows only: a short window's entropy is low even for random bytes
    window_entropies = [entropy_bits(np.bincount(array[start:start + ENTROPY_WINDOW], minlength=256))
                        for array in arrays for start in range(0, len(array) - ENTROPY_WINDOW + 1, ENTROPY_WINDOW)]
    if not window_entropies:
        window_entropies = [entropy_bits(counts)]
    expected = size / 256
    chi_square = float(((counts - expected) ** 2).sum() / expected)
    controls = counts[:32].sum() - counts[TEXT_CONTROLS].sum() + counts[0x7F]
    sampled = len(pieces) > 1
    valid = all(utf8_valid(piece, cut_start=sampled and index > 0, cut_end=sampled or len(data) > len(piece))
                for index, piece in enumerate(pieces))
    head = arrays[0]
    newlines = np.flatnonzero(head == 10)
    line_lengths = np.diff(np.concatenate([[-1], newlines, [len(head)]])) - 1
    return ByteProfile(
        size=size,
        entropy=entropy_bits(counts),
        window_entropy=(min(window_entropies), max(window_entropies)),
        chi_square=chi_square,
        text_ratio=float(counts[TEXT_BYTES].sum() / size),
        control_ratio=float(controls / size),
        nul_ratio=float(counts[0] / size),
        high_ratio=float(counts[128:].sum() / size),
        utf8_valid=valid,
        mean_line=float(line_lengths.mean()),
        max_line=int(line_lengths.max()),
    )


def profile_evidence(profile: ByteProfile) -> dict[str, Any]:
    return {"entropy_bits_per_byte": round(profile.entropy, 3),
            "window_entropy": [round(value, 3) for value in profile.window_entropy],
            "chi_square": round(profile.chi_square, 1), "text_ratio": round(profile.text_ratio, 4),
            "nul_ratio": round(profile.nul_ratio, 4), "utf8_valid": profile.utf8_valid,
            "mean_line": round(profile.mean_line, 1), "analysed_bytes": profile.size}


# ---- per-line scores for text ---------------------------------------------------------

LINE_CLASSES = ("text", "code", "abc", "markup")

PREPROCESSOR = re.compile(r"\s*#\s*(?:include|define|if|ifdef|ifndef|endif|else|elif|undef|pragma|error)\b")
CODE_START = re.compile(r"\s*[{}]")
KEYWORD_START = re.compile(  # also start prose lines ("for example ..."): count fully only beside code cues
    r"\s*(?:return|if|for|while|switch|case|break|continue|goto|static|struct|union|enum|typedef|const"
    r"|unsigned|int|long|char|void|bool|u8|u16|u32|u64|size_t|extern|inline|else|do|def|class|import|from"
    r"|elif|try|except|finally|with|raise|yield|async|await|function|var|let|package|public|private"
    r"|fn|pub|use|impl|local|then|fi|done|esac|echo|export)\b")
COMMENT_START = re.compile(r"\s*(?://|/\*|\*/)|\s+\*(?:\s|$)")
RULE = re.compile(r"[-=+|_~*#^.:`'\s]{4,}")  # underlines, table borders, separators: neutral  # C-family comment lines: prose inside code
CODE_END = re.compile(r"(?:[;{}]|\)|\):|\\|,)\s*$")
TRAILING_COMMENT = re.compile(r"\s*(?:/\*.*\*/|//.*)$")
IDENTIFIER = re.compile(r"\b[A-Za-z]+_\w+|\b[a-z]+[A-Z]\w*")  # snake_case, camelCase
CODE_TOKEN = re.compile(r"->|==|!=|&&|\|\||\+\+|<<|>>|[+\-*/|&]=|\w\(|\)\s*[;{]|\[\w*\]|::|=>")
ASSIGNMENT = re.compile(r"\s*[\w.\[\]>*-]+\s*=\s*\S")
CODE_SYMBOLS = re.compile(r"[;=<>&]")
WORD = re.compile(r"[^\W\d_]{2,}")
ABC_FIELD = re.compile(r"[A-Za-z]:(?!//)")
ABC_CHORD = re.compile(r'"[^"]*"|![^!\s]*!|\[[A-Za-z]:[^\]]*\]')
ABC_MUSIC = re.compile(r"[A-Ga-gzxZ^_=,'/0-9|:\[\]()<>~.\s{}+\\-]*\|[A-Ga-gzxZ^_=,'/0-9|:\[\]()<>~.\s{}+\\-]*")
ABC_NOTE = re.compile(r"[A-Ga-g]")
TAG = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>|<!--|-->")


def line_scores(line: str) -> tuple[float, float, float, float]:
    """Scores of one line under LINE_CLASSES (higher: more typical); all zero for blank lines."""
    stripped = line.strip()
    if not stripped or RULE.fullmatch(stripped):
        return 0.0, 0.0, 0.0, 0.0
    length = len(stripped)
    words = len(WORD.findall(stripped))
    letters_and_spaces = sum(character.isalpha() or character == " " for character in stripped) / length
    spacing = min(1.0, stripped.count(" ") / length / 0.12)  # prose separates its words by spaces
    symbols = 10 * max(len(CODE_SYMBOLS.findall(stripped)) / length - 0.05, 0.0)
    identifiers = min(2.0, 0.7 * len(IDENTIFIER.findall(stripped)))
    text = (3.0 * max(letters_and_spaces - 0.6, 0.0) / 0.4 + min(words, 8) * 0.25) * spacing - 2.0 * symbols
    body = TRAILING_COMMENT.sub("", stripped)
    cues = (1.5 * bool(CODE_END.search(body)) + min(2.0, 0.7 * len(CODE_TOKEN.findall(stripped)))
            + 1.0 * bool(ASSIGNMENT.match(line)) + 2.0 * symbols + identifiers)
    keyword = (2.0 if cues > 0 else 0.5) * bool(KEYWORD_START.match(line))
    code = (4.0 * bool(PREPROCESSOR.match(line)) + 2.0 * bool(CODE_START.match(line)) + keyword + cues
            + 1.0 * line.startswith("\t"))
    if COMMENT_START.match(line):
        code, text = code + 4.0, text / 2
    music = ABC_CHORD.sub("", stripped)
    abc = 0.0
    if ABC_FIELD.match(stripped) and length <= 80:
        abc = 5.0
    elif ABC_MUSIC.fullmatch(music) and len(ABC_NOTE.findall(music)) >= 3:
        abc = 6.0
    elif stripped.startswith("%"):
        abc = 2.0
    markup = min(6.0, 2.0 * len(TAG.findall(stripped)))
    return text, code, abc, markup


LINE = re.compile(r"[^\n]*\n|[^\n]+")
LITERAL_BLOCK_INTRO = re.compile(r"(?:.*::|\s*\.\. [\w:-]+::.*|\s*```.*)\s*$")
DOCUMENT_LINE = (1.5, 0.0, 0.0, 0.0)
BLOCK_COMMENT_OPEN = re.compile(r"(?:^\s*|[;,{}()]\s*)/\*(?!.*\*/)")


def split_lines(text: str) -> list[str]:
    """Lines with their newlines, split on "\\n" only (the same split for str and bytes)."""
    return LINE.findall(text)


def score_lines(lines: list[str]) -> np.ndarray:
    """line_scores of each line [lines, classes], with two pieces of cross-line context:
    lines inside a C block comment are code (its prose belongs to the source file), and
    literal blocks introduced by reST "::" / directives or Markdown fences are neutral
    (examples inside a document belong to the document: they count as mild text)."""
    scores = np.zeros((len(lines), len(LINE_CLASSES)))
    in_comment, literal_indent, fenced = False, None, False
    for index, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if fenced or (literal_indent is not None and (not stripped or indent > literal_indent)):
            fenced = fenced and not stripped.startswith("```")
            if stripped:
                scores[index] = DOCUMENT_LINE
            continue
        literal_indent = None
        scores[index] = line_scores(line)
        if in_comment and stripped:
            scores[index, 1] += 4.0
        if "*/" in line:
            in_comment = False
        if BLOCK_COMMENT_OPEN.search(line):
            in_comment = True
        if LITERAL_BLOCK_INTRO.fullmatch(line.rstrip("\n")) and not stripped.startswith(("/*", "//", "#")):
            scores[index] = DOCUMENT_LINE  # the introducing line is the document's own markup
            if stripped.startswith("```"):
                fenced = True
            else:
                literal_indent = indent
    return scores


def text_line_classes(text: str) -> tuple[list[str], np.ndarray]:
    """The lines of ``text`` (with their newlines) and their scores [lines, classes]."""
    lines = split_lines(text)
    return lines, score_lines(lines)


def class_fractions(scores: np.ndarray) -> dict[str, float]:
    """Fraction of non-blank lines whose best class is each of LINE_CLASSES."""
    scored = scores[scores.max(axis=1) > 0]
    if len(scored) == 0:
        return {name: 0.0 for name in LINE_CLASSES}
    best = scored.argmax(axis=1)
    return {name: float((best == index).mean()) for index, name in enumerate(LINE_CLASSES)}


# ---- text sub-classification ----------------------------------------------------------

XML_DECLARATION = re.compile(r"\s*<\?xml\b")
HTML_START = re.compile(r"\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html)\b", re.IGNORECASE | re.DOTALL)
HTML_TAGS = re.compile(r"<(?:html|head|body|div|p|a|span|table|tr|td|ul|li|br|script|style|meta|title|h[1-6])\b",
                       re.IGNORECASE)
XML_ROOT = re.compile(r"<([A-Za-z][\w:.-]*)")
XBM = re.compile(r"#define\s+\w+_width\s+\d+\s*\n#define\s+\w+_height\s+\d+.*?\bchar\s+\w+_bits\s*\[\]", re.DOTALL)
ABC_FIELDS = re.compile(r"^([A-Za-z]):", re.M)
JSON_KEY = re.compile(r'"(?:[^"\\\n]|\\.)*"\s*:')
SHEBANG = re.compile(r"#!\s*\S*?(\w+)(?:\s+(\w+))?")
LANGUAGE_HINTS = (  # (extension, pattern): the first to match at least 3 times wins
    (".py", re.compile(r"^\s*(?:def \w+\(.*\):|import \w|from [\w.]+ import |class \w+.*:$|elif |self\.)", re.M)),
    (".c", re.compile(r"^\s*#\s*(?:include|define|ifdef|ifndef)\b|^\w[\w\s\*]*\([^;]*\)\s*$|->\w+|;\s*$", re.M)),
    (".js", re.compile(r"\b(?:function\s*\w*\(|const \w+ = |let \w+ = |=> \{|console\.log)")),
    (".sh", re.compile(r"^\s*(?:fi|done|esac|then|echo |export \w+=)", re.M)),
)
SHEBANG_EXTENSIONS = {"python": ".py", "python3": ".py", "sh": ".sh", "bash": ".sh", "zsh": ".sh", "node": ".js",
                      "perl": ".pl", "ruby": ".rb"}


def decode_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def code_extension(text: str) -> tuple[str, str]:
    """(extension, language evidence) of source code."""
    shebang = SHEBANG.match(text)
    if shebang:
        interpreter = shebang.group(2) if shebang.group(1) == "env" and shebang.group(2) else shebang.group(1)
        if interpreter in SHEBANG_EXTENSIONS:
            return SHEBANG_EXTENSIONS[interpreter], f"shebang names {interpreter}"
    counts = [(len(pattern.findall(text)), extension) for extension, pattern in LANGUAGE_HINTS]
    hits, extension = max(counts)
    if hits >= 3:
        return extension, f"{hits} {extension[1:]}-like lines"
    return ".txt", "language not identified"


def classify_markup(text: str, complete: bool) -> tuple[str, float, list[str], str | None] | None:
    """HTML or XML when the text is a tag document, else None."""
    if HTML_START.match(text):
        return "html", 0.97, ["starts with <!DOCTYPE html> or <html>"], None
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped.startswith("<"):
        return None
    tags = len(TAG.findall(text[:HEAD_BYTES]))
    declared = bool(XML_DECLARATION.match(stripped))
    if not declared and tags < 3:
        return None
    if HTML_TAGS.search(text) and not declared:
        return "html", 0.85, [f"{tags} tags including HTML elements"], None
    roots = [name for name in XML_ROOT.findall(stripped[:4096]) if not name.startswith("?")]
    extension = ".svg" if roots and roots[0].lower() == "svg" else None
    evidence = ["<?xml declaration" if declared else f"starts with a tag, {tags} tags"]
    if complete and len(text) <= MEASURE_LIMIT:
        import xml.etree.ElementTree as ElementTree  # expat refuses entity-expansion bombs

        try:
            ElementTree.fromstring(text.encode("utf-8"))
            return "xml", 0.98, evidence + ["well-formed XML"], extension
        except ElementTree.ParseError as error:
            evidence.append(f"not well-formed: {error}")
    if declared and HTML_TAGS.search(text) and "xhtml" in text[:1024].lower():
        return "html", 0.9, evidence + ["XHTML"], None
    return "xml", 0.85 if declared else 0.7, evidence, extension


def classify_json(text: str, complete: bool) -> tuple[str, float, list[str], str | None] | None:
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        if complete and 0 < len(stripped) and stripped[0] == '"':
            return _json_lines(stripped)
        return None
    if complete:
        try:
            value = json.loads(stripped)
            shape = f"object with {len(value)} keys" if isinstance(value, dict) else f"array of {len(value)}"
            return "json", 0.99, [f"parses as JSON ({shape})"], None
        except (json.JSONDecodeError, RecursionError):
            return _json_lines(stripped)
    keys = len(JSON_KEY.findall(stripped[:HEAD_BYTES]))
    if keys >= 3 and keys * 20 >= min(len(stripped), HEAD_BYTES) / 10:
        return "json", 0.8, [f"truncated sample with {keys} JSON object keys"], None
    return None


def _json_lines(text: str) -> tuple[str, float, list[str], str | None] | None:
    lines = [line for line in text.splitlines()[:50] if line.strip()]
    try:
        values = [json.loads(line) for line in lines]
    except (json.JSONDecodeError, RecursionError):
        return None
    if len(values) >= 2 and all(isinstance(value, (dict, list)) for value in values):
        return "json", 0.95, [f"JSON lines ({len(values)} records checked)"], ".jsonl"
    return None


def classify_text(data: bytes, complete: bool) -> tuple[str, float, list[Any], str | None]:
    """(kind, confidence, evidence, extension override) of text bytes."""
    text = decode_text(data[:HEAD_BYTES] if not complete else data)
    complete = complete and len(data) <= HEAD_BYTES * 16
    for classify in (classify_json, classify_markup):
        found = classify(text, complete)
        if found:
            return found
    head = text[:HEAD_BYTES]
    if XBM.search(head[:2048]):
        return "xbm", 0.95, ["#define NAME_width/_height and NAME_bits[]: X bitmap"], None
    _, scores = text_line_classes(head[:LINE_SAMPLE_CHARS])
    fractions = class_fractions(scores)
    shares = {name: round(value, 3) for name, value in fractions.items()}
    fields = set(ABC_FIELDS.findall(head))
    if "K" in fields and fields & {"X", "T"} and fractions["abc"] >= 0.3:
        return "abc", min(0.99, 0.7 + fractions["abc"] / 2), [
            f"ABC header fields {''.join(sorted(fields))} and music lines", {"line_classes": shares}], None
    if fractions["code"] >= 0.4 and fractions["code"] > fractions["abc"]:
        extension, language = code_extension(head)
        return "code", min(0.98, 0.5 + fractions["code"] / 2), [
            f"{fractions['code']:.0%} of lines look like code ({language})", {"line_classes": shares}], extension
    if fractions["markup"] >= 0.5:
        return "xml", 0.6, [f"{fractions['markup']:.0%} of lines hold tags", {"line_classes": shares}], None
    evidence = [f"{fractions['text']:.0%} of lines look like prose" if fractions["text"] >= 0.5
                else "text without a more specific structure", {"line_classes": shares}]
    return "text", min(0.97, 0.6 + max(fractions["text"], 0.2) / 2), evidence, None


# ---- the detector ---------------------------------------------------------------------

def model_bits_per_byte(model, data: bytes, limit: int = SURPRISAL_PREFIX) -> float:
    """Mean surprisal (bits/byte) of the model over a prefix of ``data``."""
    from omnibyte.scoring import score_bytes

    return float(score_bytes(model, data[:limit]).bits.mean())


@dataclasses.dataclass
class ModalityDetector:
    """Combines signature, statistical, textual and (optionally) model evidence."""

    measure_limit: int = MEASURE_LIMIT
    random_bits_per_byte: float = RANDOM_BITS_PER_BYTE

    def detect(self, data: bytes, model=None) -> Detection:
        data = bytes(data)
        if not data:
            return make_detection("empty", 1.0, ["no bytes"], 0)
        match, rejected = match_at(data, 0)
        if match is not None:
            detection = self._from_signature(match, data, rejected)
        else:
            detection = self._from_content(data, rejected)
        if model is not None:
            detection = self._with_surprisal(detection, data, model)
        return detection

    def _from_signature(self, match: HeaderMatch, data: bytes, rejected: list[str]) -> Detection:
        evidence: list[Any] = list(match.evidence)
        label = KINDS[match.kind].label
        if match.kind in ("gzip", "xz", "zip") and len(data) > self.measure_limit:
            evidence.append("length not walked (large compressed stream)")
            confidence = 0.95
        else:
            length = match.declared_length(data)
            if length is None:
                evidence.append("end of the structure not found in the data (truncated or unmeasurable)")
                confidence = 0.9
            elif length == len(data):
                evidence.append(f"structure ends exactly at the end of the data ({length} bytes)")
                confidence = 0.99
            elif length < len(data):
                evidence.append(f"{label} ends at byte {length}; {len(data) - length} more bytes follow "
                                "(see --segments)")
                confidence = 0.9
            else:
                evidence.append(f"truncated: the header declares {length} bytes, {len(data)} present")
                confidence = 0.85
        return make_detection(match.kind, confidence, evidence + rejected, len(data), match.extension)

    def _from_content(self, data: bytes, rejected: list[str]) -> Detection:
        profile = byte_profile(data)
        statistics = profile_evidence(profile)
        if profile.looks_like_text:
            complete = profile.size == len(data)
            kind, confidence, evidence, extension = classify_text(data, complete)
            if not profile.utf8_valid:
                evidence.append("8-bit text (not valid UTF-8)")
            return make_detection(kind, confidence, evidence + rejected + [statistics], len(data), extension)
        if profile.looks_uniform:
            confidence = 0.95 if profile.size >= 1024 else 0.6 + 0.35 * profile.size / 1024
            windows = (f", every {ENTROPY_WINDOW}-byte window >= {profile.window_entropy[0]:.2f}"
                       if profile.size >= ENTROPY_WINDOW else "")
            evidence = [f"no signature; byte histogram uniform (entropy {profile.entropy:.3f} bits/byte, "
                        f"chi-square {profile.chi_square:.0f}{windows})"]
            return make_detection("random", confidence, evidence + rejected + [statistics], len(data))
        reason = ("high entropy but a non-uniform histogram (compressed data without a known header?)"
                  if profile.entropy > 7.0 else f"{profile.text_ratio:.0%} text bytes, {profile.nul_ratio:.0%} NUL")
        return make_detection("binary", 0.6, [f"no known signature; {reason}"] + rejected + [statistics], len(data))

    def _with_surprisal(self, detection: Detection, data: bytes, model) -> Detection:
        bits = model_bits_per_byte(model, data)
        evidence = detection.evidence + [{"model_bits_per_byte": round(bits, 3)}]
        if detection.kind == "binary" and bits > self.random_bits_per_byte:
            detection = make_detection("random", 0.7, [f"model surprisal {bits:.2f} bits/byte > "
                                                       f"{self.random_bits_per_byte}"] + evidence, detection.size)
        elif detection.kind == "random":
            agrees = bits > self.random_bits_per_byte
            confidence = min(0.99, detection.confidence + 0.04) if agrees else detection.confidence * 0.8
            detection = make_detection("random", confidence, evidence, detection.size)
        else:
            detection = dataclasses.replace(detection, evidence=evidence)
        return dataclasses.replace(detection, model_bits_per_byte=round(bits, 3))


DEFAULT_DETECTOR = ModalityDetector()


def detect(data: bytes, model=None) -> Detection:
    """Detect the kind of ``data`` with the default detector."""
    return DEFAULT_DETECTOR.detect(data, model)


def extension_for(data: bytes) -> str:
    """File-name extension (with the dot) for ``data``'s detected kind; "" for no bytes."""
    return detect(data).extension
