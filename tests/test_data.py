"""Data package: reading inputs, the corpus, splits, training and evaluation windows."""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from omnibyte.data import (
    ByteCorpus,
    Document,
    SkipLog,
    WindowSampler,
    file_kind,
    iter_documents,
    iter_eval_windows,
    load_enwik8,
    num_eval_windows,
)
from omnibyte.data import enwik8 as enwik8_module
from omnibyte.data import sources
from omnibyte.errors import OmnibyteError
from omnibyte.models.base import BOS

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

FILES = {
    "a.txt": b"alpha\n" * 7,
    "sub/b.c": b"int main(void) { return 0; }\n",
    "sub/deeper/c.bin": bytes(range(256)),
}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def contents(paths, skipped: SkipLog | None = None) -> dict[str, bytes]:
    return {doc.name: bytes(np.asarray(doc.data)) for doc in iter_documents(paths, skipped)}


def reference_stream(corpus: ByteCorpus) -> np.ndarray:
    """The token stream built the obvious way: BOS before every document's bytes."""
    parts = []
    for index in range(corpus.num_documents):
        parts += [[BOS], np.asarray(corpus.document(index).data, dtype=np.int64)]
    return np.concatenate(parts).astype(np.int64)


def make_corpus(sizes: list[int], seed: int = 0) -> ByteCorpus:
    generator = np.random.default_rng(seed)
    return ByteCorpus(
        [
            Document(f"doc{i}.txt", generator.integers(0, 256, size, dtype=np.uint8).tobytes())
            for i, size in enumerate(sizes)
        ]
    )


# ---- sources ------------------------------------------------------------------------
def test_folder_is_read_recursively_in_sorted_order(tmp_path):
    write_tree(tmp_path, FILES)
    found = contents([tmp_path])
    assert list(found) == [str(tmp_path / name) for name in sorted(FILES)]
    assert list(found.values()) == [FILES[name] for name in sorted(FILES)]


def test_glob_patterns_expand(tmp_path):
    write_tree(tmp_path, FILES)
    assert list(contents([str(tmp_path / "**" / "*.c")]).values()) == [FILES["sub/b.c"]]
    assert list(contents([str(tmp_path / "*.txt")]).values()) == [FILES["a.txt"]]


def test_empty_hidden_duplicate_and_unreadable_inputs_are_counted(tmp_path):
    write_tree(tmp_path, {"data.txt": b"payload", "empty.txt": b"", ".git/config": b"x"})
    (tmp_path / "dangling").symlink_to(tmp_path / "missing-target")
    skipped = SkipLog()
    found = contents([tmp_path, tmp_path / "data.txt"], skipped)
    assert list(found.values()) == [b"payload"]
    assert skipped.counts == {"empty": 1, "hidden": 1, "unreadable": 1, "duplicate": 1}
    assert "empty.txt" in skipped.summary() and "4 inputs" in skipped.summary()


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [(".gz", gzip.compress), (".xz", lzma.compress), (".bz2", bz2.compress)],
)
def test_compressed_single_file_is_decompressed(tmp_path, suffix, compress):
    path = tmp_path / f"notes.txt{suffix}"
    path.write_bytes(compress(FILES["a.txt"]))
    assert contents([path]) == {str(path): FILES["a.txt"]}


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2"])
def test_tar_members_stream_as_documents(tmp_path, suffix):
    source = write_tree(tmp_path / "src", FILES)
    empty = source / "empty.txt"
    empty.write_bytes(b"")
    archive = tmp_path / f"bundle{suffix}"
    with tarfile.open(archive, "w:" + {".tar": "", ".tgz": "gz"}.get(suffix, suffix[5:])) as tar:
        for name in sorted(FILES):
            tar.add(source / name, arcname=name)
        tar.add(empty, arcname="empty.txt")
        tar.add(source / "sub", arcname="only-a-folder", recursive=False)
    skipped = SkipLog()
    found = contents([archive], skipped)
    assert found == {f"{archive}:{name}": FILES[name] for name in sorted(FILES)}
    assert skipped.counts == {"empty": 1}


def test_zip_members_are_documents(tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in FILES.items():
            zf.writestr(name, content)
    assert contents([archive]) == {f"{archive}:{name}": content for name, content in FILES.items()}


def test_large_plain_file_is_memory_mapped(tmp_path):
    big = tmp_path / "big.bin"
    payload = np.random.default_rng(0).integers(0, 256, sources.MEMMAP_MIN_BYTES, dtype=np.uint8)
    big.write_bytes(payload.tobytes())
    small = write_tree(tmp_path, {"small.txt": b"tiny"}) / "small.txt"
    (big_doc,) = iter_documents([big])
    (small_doc,) = iter_documents([small])
    assert isinstance(big_doc.data, np.memmap) and np.array_equal(big_doc.data, payload)
    assert small_doc.data == b"tiny"


@pytest.mark.parametrize("case", ["missing", "empty folder", "only empty files", "no glob match"])
def test_unusable_inputs_raise_clear_errors(tmp_path, case):
    target = {
        "missing": tmp_path / "nope.txt",
        "empty folder": tmp_path / "folder",
        "only empty files": tmp_path / "folder",
        "no glob match": tmp_path / "*.nothing",
    }[case]
    (tmp_path / "folder").mkdir()
    if case == "only empty files":
        (tmp_path / "folder" / "e.txt").write_bytes(b"")
    with pytest.raises(OmnibyteError, match=str(target).replace("*", r"\*")):
        list(iter_documents([target]))


@pytest.mark.parametrize("name", ["broken.txt.gz", "broken.tar.xz", "broken.zip"])
def test_corrupt_archives_raise_omnibyte_error_naming_the_file(tmp_path, name):
    good = tmp_path / f"good{name[6:]}"
    if name.endswith(".gz"):
        good.write_bytes(gzip.compress(os.urandom(5000)))
    elif name.endswith(".zip"):
        with zipfile.ZipFile(good, "w") as zf:
            zf.writestr("a.bin", os.urandom(5000))
    else:
        with tarfile.open(good, "w:xz") as tar:
            info = tarfile.TarInfo("a.bin")
            info.size = 50_000
            tar.addfile(info, io.BytesIO(os.urandom(50_000)))
    broken = tmp_path / name
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(OmnibyteError, match="broken"):
        list(iter_documents([broken]))


def test_file_kind_labels():
    assert file_kind("linux.tar.xz:kernel/fork.c") == ".c"
    assert file_kind("data/a.TXT.gz") == ".txt"
    assert file_kind("bundle.zip:top.md") == ".md"
    assert file_kind("folder/Makefile") == "(none)"
    assert file_kind("x/notes.txt[valid]") == ".txt"


# ---- corpus -------------------------------------------------------------------------
def test_corpus_reads_across_documents_and_truncates_at_max_bytes(tmp_path):
    write_tree(tmp_path, FILES)
    stream = b"".join(FILES[name] for name in sorted(FILES))
    corpus = ByteCorpus.from_paths([tmp_path])
    assert corpus.num_bytes == len(stream) and corpus.num_documents == 3
    assert corpus.doc_starts.tolist() == [0, len(FILES["a.txt"]), len(stream) - 256]
    for start, length in [(0, len(stream)), (40, 10), (len(stream) - 300, 300)]:
        assert corpus.read(start, length).tobytes() == stream[start : start + length]
    limited = ByteCorpus.from_paths([tmp_path], max_bytes=50)
    assert limited.num_bytes == 50 and limited.read(0, 50).tobytes() == stream[:50]


def test_tail_split_is_deterministic_and_covers_every_byte():
    corpus = make_corpus([300, 500, 200])
    train, valid = corpus.split(0.25, by="tail")
    assert (train.num_bytes, valid.num_bytes) == (750, 250)
    joined = np.concatenate([train.read(0, 750), valid.read(0, 250)])
    assert np.array_equal(joined, corpus.read(0, 1000))
    assert valid.names == ["doc1.txt[valid]", "doc2.txt"]
    again = corpus.split(0.25, by="tail")[1]
    assert np.array_equal(again.read(0, 250), valid.read(0, 250))


def test_document_split_is_deterministic_disjoint_and_complete():
    corpus = make_corpus([50 + i for i in range(40)])
    train, valid = corpus.split(0.2)  # auto: 40 documents -> by document
    assert set(train.names).isdisjoint(valid.names)
    assert sorted(train.names + valid.names) == sorted(corpus.names)
    assert train.num_bytes + valid.num_bytes == corpus.num_bytes
    assert 1 <= valid.num_documents < 20
    assert corpus.split(0.2)[1].names == valid.names
    # The split depends on names only, so it is the same in a corpus ordered differently.
    reordered = ByteCorpus([corpus.document(i) for i in reversed(range(40))])
    assert sorted(reordered.split(0.2)[1].names) == sorted(valid.names)


def test_document_split_does_not_depend_on_where_the_data_folder_is(tmp_path):
    """The same files in two places split the same way (names are hashed below their common
    folder): a run moved, or a test's temporary folder, must not change its validation set."""
    splits = []
    for place in (tmp_path / "here", tmp_path / "somewhere" / "else"):
        for index in range(40):
            folder = place / "data" / f"part{index % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"file{index}.txt").write_bytes(b"x" * (10 + index))
        valid = ByteCorpus.from_paths([place / "data"]).split(0.2, by="documents")[1]
        splits.append(sorted(Path(name).relative_to(place).as_posix() for name in valid.names))
    assert splits[0] == splits[1] and 1 <= len(splits[0]) < 20


def test_document_split_keeps_one_document_each_side():
    train, valid = make_corpus([10, 10]).split(0.01, by="documents")
    assert (train.num_documents, valid.num_documents) == (1, 1)


def test_zero_validation_fraction_gives_empty_validation():
    for by in ("tail", "documents"):
        train, valid = make_corpus([100, 100]).split(0.0, by=by)
        assert (train.num_bytes, valid.num_bytes, valid.num_documents) == (200, 0, 0)
    assert list(iter_eval_windows(valid, 16, 2)) == []


def test_split_tail_bytes_sizes_and_bad_fractions():
    corpus = make_corpus([1000, 1000])
    train, valid, test = corpus.split_tail_bytes(test_bytes=300, validation_bytes=200)
    assert (train.num_bytes, valid.num_bytes, test.num_bytes) == (1500, 200, 300)
    assert np.array_equal(test.read(0, 300), corpus.read(1700, 300))
    with pytest.raises(OmnibyteError):
        corpus.split_tail_bytes(test_bytes=1500, validation_bytes=500)
    with pytest.raises(OmnibyteError):
        corpus.split(1.0)


# ---- training windows ---------------------------------------------------------------
def test_windows_are_consecutive_stream_tokens_with_bos_at_document_starts():
    corpus = make_corpus([37, 5, 120, 64, 1, 90])
    stream = reference_stream(corpus)
    sampler = WindowSampler(corpus, seq_len=48, batch_size=16, seed=3)
    seen_boundary = False
    for step in range(5):
        batch = sampler.batch(step)
        assert batch.tokens.dtype == torch.long and batch.mask.dtype == torch.bool
        for row, start in enumerate(sampler.window_starts(step)):
            window = stream[start : start + 49]
            assert batch.tokens[row].tolist() == window[:-1].tolist()
            is_bos = window[1:] == BOS
            assert batch.mask[row].tolist() == (~is_bos).tolist()
            scored = batch.targets[row][batch.mask[row]]
            assert scored.tolist() == window[1:][~is_bos].tolist()
            seen_boundary |= bool(is_bos.any())
    assert seen_boundary
    assert int(batch.targets.max()) < 256


def test_batches_are_a_pure_function_of_seed_and_step():
    corpus = make_corpus([5000])
    first = WindowSampler(corpus, 32, 4, seed=1)
    resumed = WindowSampler(corpus, 32, 4, seed=1)
    assert torch.equal(first.batch(7).tokens, resumed.batch(7).tokens)
    assert not torch.equal(first.batch(7).tokens, first.batch(8).tokens)
    other_seed = WindowSampler(corpus, 32, 4, seed=2)
    assert not torch.equal(first.batch(7).tokens, other_seed.batch(7).tokens)


def test_corpus_shorter_than_a_window_is_padded_and_masked():
    corpus = ByteCorpus([Document("tiny", b"hello")])
    batch = WindowSampler(corpus, seq_len=16, batch_size=2).batch(0)
    assert batch.tokens[0, :6].tolist() == [BOS, *b"hello"]
    assert batch.targets[0, :5].tolist() == list(b"hello")
    assert batch.mask[0].tolist() == [True] * 5 + [False] * 11
    with pytest.raises(OmnibyteError):
        WindowSampler(ByteCorpus([]), 16, 2)


def test_sampler_is_fast_on_a_large_corpus():
    big = np.zeros(100_000_000, dtype=np.uint8)
    parts = [Document(f"part{i}", big[i * 10**6 : (i + 1) * 10**6]) for i in range(100)]
    corpus = ByteCorpus(parts)
    sampler = WindowSampler(corpus, seq_len=8192, batch_size=8)
    sampler.batch(0)
    started = time.perf_counter()
    for step in range(1, 11):
        assert sampler.batch(step).tokens.shape == (8, 8192)
    assert (time.perf_counter() - started) / 10 < 0.05


# ---- evaluation windows -------------------------------------------------------------
@pytest.mark.parametrize(("seq_len", "batch_size"), [(7, 3), (64, 2), (1000, 4)])
def test_eval_windows_score_every_byte_exactly_once(seq_len, batch_size):
    corpus = make_corpus([37, 5, 120, 64, 1, 90])
    batches = list(iter_eval_windows(corpus, seq_len, batch_size))
    assert len(batches) == -(-num_eval_windows(corpus, seq_len) // batch_size)
    tokens = torch.cat([b.tokens for b in batches]).reshape(-1)
    targets = torch.cat([b.targets for b in batches]).reshape(-1)
    mask = torch.cat([b.mask for b in batches]).reshape(-1)
    doc_ids = torch.cat([b.doc_ids for b in batches]).reshape(-1)
    assert all(b.tokens.shape == (batch_size, seq_len) for b in batches)
    scored_bytes = targets[mask].numpy().astype(np.uint8).tobytes()
    assert scored_bytes == corpus.read(0, corpus.num_bytes).tobytes()
    assert torch.bincount(doc_ids[mask]).tolist() == corpus.doc_lengths.tolist()
    assert int((doc_ids[~mask] != -1).sum()) == 0
    # Each document's first byte is predicted from BOS.
    assert int((tokens == BOS).sum()) == corpus.num_documents


# ---- enwik8 -------------------------------------------------------------------------
def test_enwik8_checks_size_and_md5_and_splits_90_5_5(tmp_path, monkeypatch):
    payload = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    raw = tmp_path / "enwik8"
    raw.write_bytes(payload)
    with pytest.raises(OmnibyteError, match="100,000,000"):
        load_enwik8(raw)
    monkeypatch.setattr(enwik8_module, "ENWIK8_BYTES", 2000)
    with pytest.raises(OmnibyteError, match="md5"):
        load_enwik8(raw)
    monkeypatch.setattr(enwik8_module, "ENWIK8_MD5", hashlib.md5(payload).hexdigest())
    archive = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("enwik8", payload)
    for path in (raw, archive):
        train, valid, test = load_enwik8(path)
        assert (train.num_bytes, valid.num_bytes, test.num_bytes) == (1800, 100, 100)
        assert test.read(0, 100).tobytes() == payload[1900:]
    with pytest.raises(OmnibyteError, match="not found"):
        load_enwik8(tmp_path / "missing")


# ---- real data ----------------------------------------------------------------------
def require_shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def test_real_linux_tar_members_stream_in_place():
    archive = require_shared("code/linux-6.1-core.tar.xz")
    corpus = ByteCorpus.from_paths([archive], max_bytes=1_500_000)
    assert corpus.num_bytes == 1_500_000 and corpus.num_documents > 10
    assert all(name.startswith(f"{archive}:") for name in corpus.names)
    assert ".c" in corpus.bytes_by_kind()
    first = corpus.document(0)
    with tarfile.open(archive, "r|xz") as tar:
        member = next(m for m in tar if m.isreg())
        assert first.name.endswith(member.name)
        assert bytes(np.asarray(first.data)) == tar.extractfile(member).read()
    batch = WindowSampler(corpus, 256, 4).batch(0)
    assert batch.mask.any()


def test_real_gcide_gzip_reads_and_splits():
    path = require_shared("text/gcide.txt.gz")
    corpus = ByteCorpus.from_paths(str(path), max_bytes=3_000_000)
    with gzip.open(path, "rb") as handle:
        assert corpus.read(0, 4096).tobytes() == handle.read(4096)
    train, valid, test = corpus.split_tail_bytes(test_bytes=200_000, validation_bytes=200_000)
    assert train.num_bytes + valid.num_bytes + test.num_bytes == 3_000_000
    assert valid.names == [f"{path}[valid]"] and file_kind(valid.names[0]) == ".txt"


# ---- omnibyte's own output is never read as data ---------------------------------------------

def test_a_run_directory_inside_the_data_is_not_read(tmp_path):
    """``omnibyte train . --out runs/x --resume``: the corpus is the user's files only."""
    from omnibyte.models import build_model
    from omnibyte.models.serialization import save_model
    from omnibyte.train.trainer import TrainConfig, Trainer

    data = write_tree(tmp_path / "project", FILES)
    before = contents([data])
    out = data / "runs" / "x"
    config = TrainConfig(seq_len=16, batch_size=2, steps=2, eval_every=0, device="cpu")
    Trainer(build_model("flat", "tiny"), ByteCorpus.from_paths([data]), config, out, progress=False).fit()
    save_model(build_model("flat", "tiny"), data / "exported")  # a model folder (no trainer state)
    (data / "notes.txt.omb").write_bytes(b"\x89OMB\x02" + bytes(40))  # a compressed stream
    (data / "copy.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    (data / "other.safetensors").write_bytes(b"\x00" * 16)  # not ours: data like any file
    assert {"config.json", "metrics.jsonl", "model.safetensors", "trainer_state.safetensors"} <= {
        path.name for path in out.iterdir()}
    skipped = SkipLog()
    found = contents([data], skipped)
    assert set(found) == set(before) | {str(data / "other.safetensors")}
    assert skipped.counts["omnibyte run or model folder"] == 2
    assert skipped.counts["written by omnibyte"] == 2
    assert "omnibyte run or model folder" in skipped.summary() and str(out) in skipped.summary()
    corpus = ByteCorpus.from_paths([data], exclude=[data / "sub", data / "a.txt"])  # a --out not yet written
    assert corpus.skipped.counts["excluded (output of this run)"] == 2
    assert not any(name.startswith(str(data / "sub")) or name.endswith("a.txt") for name in corpus.names)
    with pytest.raises(OmnibyteError, match=r"no usable documents in .*x/\* .*omnibyte run or model folder"):
        contents([str(data / "runs" / "x" / "*")])  # its files, matched one by one
    with pytest.raises(OmnibyteError, match="no usable documents in .*x .*omnibyte run or model folder"):
        contents([out])


def test_the_stream_magic_is_the_containers():
    from omnibyte.apps import container

    assert sources.STREAM_MAGIC == container.MAGIC
