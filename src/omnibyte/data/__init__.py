"""Data: files, folders, globs and archives as documents, a byte corpus, and windows."""
from omnibyte.data.corpus import ByteCorpus
from omnibyte.data.enwik8 import load_enwik8
from omnibyte.data.sampler import (
    Batch,
    TokenStream,
    WindowSampler,
    iter_eval_windows,
    num_eval_windows,
)
from omnibyte.data.sources import Document, SkipLog, file_kind, iter_documents

__all__ = [
    "Batch", "ByteCorpus", "Document", "SkipLog", "TokenStream", "WindowSampler",
    "file_kind", "iter_documents", "iter_eval_windows", "load_enwik8", "num_eval_windows",
]
