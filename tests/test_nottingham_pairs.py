"""ABC <-> MIDI pairs of the real Nottingham data (skipped without ../shared/data), and the music
checks (mido notes, abc2midi; the abc2midi tests skip when it is not installed: see
scripts/setup-test-deps.sh)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import mido
import pytest

from omnibyte import music
from omnibyte.cli import main
from omnibyte.data import nottingham
from omnibyte.data.pairs import decode_records, kind_problem
from omnibyte.errors import OmnibyteError

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nottingham"
needs_data = pytest.mark.skipif(not (DATA / "ABC_cleaned").is_dir(), reason=f"Nottingham data not found at {DATA}")
needs_abc2midi = pytest.mark.skipif(music.abc2midi_path() is None,
                                    reason="abc2midi not installed (scripts/setup-test-deps.sh installs it)")


@pytest.fixture(scope="module")
def tunes():
    return nottingham.load_tunes(DATA)


@needs_data
def test_every_tune_pairs_with_its_midi_file(tunes):
    assert len(tunes) == 1034  # the README: all 1,034 match
    by_name = {tune.name: tune for tune in tunes}
    jig = by_name["jigs1"]
    assert jig.abc.startswith(b"X: 1\nT:A and D\n") and jig.abc.endswith(b"\n") and not jig.abc.endswith(b"\n\n")
    assert jig.midi == (DATA / "MIDI" / "jigs1.mid").read_bytes()
    second = by_name["jigs2"]
    assert second.abc.startswith(b"X: 1\nT:Abacus\n")  # the number line is the same in every tune
    for tune in tunes:
        assert kind_problem("abc", tune.abc) is None and kind_problem("midi", tune.midi) is None
        assert tune.abc.count(b"\nX:") == 0  # one tune per record


@needs_data
def test_the_split_by_tune_is_fixed(tunes):
    train, test = nottingham.split_by_tune(tunes, seed=0)
    assert (len(train), len(test)) == (931, 103)
    assert not {tune.name for tune in train} & {tune.name for tune in test}
    again = nottingham.split_by_tune(list(reversed(tunes)), seed=0)  # the order given does not matter
    assert [tune.name for tune in again[1]] == [tune.name for tune in test]
    assert [tune.name for tune in test][:5] == ["ashover11", "ashover17", "ashover32", "ashover42", "hpps1"]
    other = nottingham.split_by_tune(tunes, seed=1)[1]
    assert {tune.name for tune in other} != {tune.name for tune in test}


@needs_data
@pytest.mark.slow  # writes 1,034 files, each fsynced
def test_both_directions_and_the_dataset_writer(tunes, tmp_path):
    train, test = nottingham.nottingham_records(DATA, "midi2abc")
    assert all(record.direction == ("midi", "abc") for record in train + test)
    forward_train, forward_test = nottingham.nottingham_records(DATA, "abc2midi")
    assert [(r.source, r.target) for r in forward_test] == [(r.target, r.source) for r in test]
    assert main(["datasets", "nottingham", "--direction", "abc2midi", "--data", str(DATA),
                 "--out", str(tmp_path / "n")]) == 0
    manifest = json.loads((tmp_path / "n" / "dataset.json").read_text())
    assert manifest["records"] == {"train": 931, "test": 103} and manifest["direction"] == "abc2midi"
    written = [record for path in sorted((tmp_path / "n" / "test").iterdir())
               for record, _ in decode_records(path.read_bytes())]
    assert sorted(written, key=lambda r: r.name) == sorted(forward_test, key=lambda r: r.name)
    with pytest.raises(OmnibyteError, match="not the Nottingham folder"):
        nottingham.load_tunes(tmp_path)


@needs_data
def test_note_events_of_a_reference_and_of_changed_files(tunes):
    midi = next(tune for tune in tunes if tune.name == "jigs1").midi
    notes = music.midi_notes(midi)
    assert [len(track) for track in notes] == [171, 128]  # melody, chords
    assert notes[0][0] == (2560, 78, 512)  # (start, pitch, duration) of the first melody note
    assert music.same_notes(midi, midi)
    changed = mido.MidiFile(file=io.BytesIO(midi))
    first_note = next(message for message in changed.tracks[0] if message.type == "note_on")
    first_note.note += 1
    buffer = io.BytesIO()
    changed.save(file=buffer)
    assert music.midi_parses(buffer.getvalue()) and not music.same_notes(buffer.getvalue(), midi)
    assert not music.midi_parses(midi[:-5]) and music.midi_notes(midi[:-5]) is None


def test_notes_from_a_hand_written_midi_file():
    track = mido.MidiTrack([
        mido.Message("note_on", note=60, velocity=80, time=0),
        mido.Message("note_on", note=64, velocity=80, time=10),
        mido.Message("note_on", note=60, velocity=0, time=20),   # a note_on of velocity 0 ends a note
        mido.Message("note_off", note=64, velocity=0, time=5),
        mido.Message("note_on", note=67, velocity=80, time=0),   # never released
    ])
    midi = mido.MidiFile(ticks_per_beat=96)
    midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    assert music.midi_notes(buffer.getvalue()) == [[(0, 60, 30), (10, 64, 25), (35, 67, music.UNFINISHED)]]


@needs_abc2midi
def test_abc2midi_judges_abc():
    tune = b"X: 1\nT:Test\nM:6/8\nL:1/8\nK:G\nGAB c2d|e3 d3|]\n"
    assert music.check_abc(tune) == music.AbcCheck(parses=True, errors=0)
    assert music.abc_parses(b"no tune here at all\n") is False
    assert music.check_abc(b"X: 1\nK:G\n|: abc [[ |: def\n").errors > 0


def test_abc_checks_without_abc2midi_say_so(tmp_path):
    assert music.abc_parses(b"X: 1\nK:G\nabc|\n", str(tmp_path / "no-such-program")) is None
