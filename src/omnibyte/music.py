"""Checks of symbolic music that a conversion model wrote: does a MIDI file parse (``mido``),
does ABC parse (``abc2midi`` from Debian's ``abcmidi``), and which notes a MIDI file plays.

Notes are compared as bGPT's ABC -> MIDI evaluation needs: per track, the sorted list of
``(start tick, pitch, duration in ticks)`` of every note, read with mido (a ``note_on`` with
velocity 0 ends a note like a ``note_off``). Two files have equal notes when every track has
the same list; tempo, velocities, channels and meta events do not count.
"""
from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import mido

ABC2MIDI = "abc2midi"
ABC2MIDI_TIMEOUT_S = 30.0
UNFINISHED = -1  # duration of a note that is never released

TrackNotes = list[tuple[int, int, int]]  # (start, pitch, duration), sorted


def read_midi(data: bytes) -> mido.MidiFile | None:
    """The parsed MIDI file, or None when mido cannot read it (cut short, bad bytes, ...)."""
    try:
        return mido.MidiFile(file=io.BytesIO(bytes(data)))
    except Exception:  # mido raises many kinds (EOFError, OSError, ValueError, KeyError, ...)
        return None


def midi_parses(data: bytes) -> bool:
    return read_midi(data) is not None


def midi_notes(data: bytes) -> list[TrackNotes] | None:
    """Every track's notes, or None when the file does not parse. A note still sounding at
    the end of its track gets the duration ``UNFINISHED``."""
    midi = read_midi(data)
    if midi is None:
        return None
    tracks = []
    for track in midi.tracks:
        now = 0
        sounding: dict[tuple[int, int], list[int]] = defaultdict(list)  # (channel, pitch) -> starts
        notes: TrackNotes = []
        for message in track:
            now += message.time
            if message.type == "note_on" and message.velocity > 0:
                sounding[(message.channel, message.note)].append(now)
            elif message.type in ("note_off", "note_on"):
                starts = sounding.get((message.channel, message.note))
                if starts:
                    start = starts.pop(0)  # the earliest sounding note of that pitch ends first
                    notes.append((start, message.note, now - start))
        notes += [(start, pitch, UNFINISHED) for (_, pitch), starts in sounding.items() for start in starts]
        tracks.append(sorted(notes))
    return tracks


def same_notes(output: bytes, reference: bytes) -> bool:
    """True when ``output`` parses and plays exactly the reference's notes, track by track."""
    expected = midi_notes(reference)
    if expected is None:
        raise ValueError("the reference MIDI file does not parse")
    return midi_notes(output) == expected


def abc2midi_path(path: str | None = None) -> str | None:
    """The abc2midi program (``path``, else the one on PATH); None when there is none."""
    if path is not None:
        return path if Path(path).is_file() else None
    return shutil.which(ABC2MIDI)


@dataclasses.dataclass(frozen=True)
class AbcCheck:
    """What abc2midi made of some ABC: ``parses`` when it wrote a MIDI file that mido reads;
    ``errors`` counts the lines it reported as errors on the way. abc2midi is lenient: it
    reports errors (a repeat sign it does not expect, an unknown chord name) and still writes
    the tune; 8% of the Nottingham reference tunes get such errors, so they are counted apart."""

    parses: bool
    errors: int

    @property
    def clean(self) -> bool:
        return self.parses and self.errors == 0


def check_abc(text: bytes, program: str | None = None) -> AbcCheck | None:
    """Run abc2midi on ``text``; None when abc2midi is missing or cannot run."""
    program = abc2midi_path(program)
    if program is None:
        return None
    with tempfile.TemporaryDirectory(prefix="omnibyte-abc-") as folder:
        source, output = Path(folder) / "tune.abc", Path(folder) / "tune.mid"
        source.write_bytes(bytes(text))
        try:
            result = subprocess.run([program, str(source), "-o", str(output)], capture_output=True,
                                    timeout=ABC2MIDI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return AbcCheck(False, 1)
        except OSError:  # not executable here (another C library, no permission): no verdict
            return None
        report = (result.stdout + result.stderr).decode("latin-1").splitlines()
        errors = sum(line.startswith("Error") for line in report)
        parses = result.returncode == 0 and output.is_file() and midi_parses(output.read_bytes())
        return AbcCheck(parses, errors)


def abc_parses(text: bytes, program: str | None = None) -> bool | None:
    """True when abc2midi turns ``text`` into a MIDI file that mido reads; None when abc2midi
    is missing."""
    check = check_abc(text, program)
    return None if check is None else check.parses
