"""omnibyte: universal byte-level models.

    >>> import omnibyte
    >>> model = omnibyte.build_model("flat", "tiny")
    >>> model.generate(b"hello", max_new_bytes=16)
"""
import os

# GNU OpenMP threads spin for a long time after each parallel region before they sleep. Next to
# any other busy process on a small machine that spinning takes the cores the work needs: one
# busy neighbour cut training on the 2-core VM from 3.3 to 1.1 steps/s. A short spin keeps the
# idle speed and most of it back (bench/bench_cpu.py, bench/RESULTS.md). It must be set before
# torch loads its OpenMP runtime, hence here; a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
# MKL's matrix products round differently with another thread count or buffer alignment unless
# its conditional numerical reproducibility is on; compression with --adapt needs the encoder's
# and the decoder's gradients bit-identical (docs/compression.md). Read when MKL starts: here.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from omnibyte.errors import OmnibyteError  # noqa: E402 (after the OpenMP setting above)
from omnibyte.models import BOS, ByteModel, BytePredictor, ModelConfig, build_model, make_config  # noqa: E402
from omnibyte.models.builtin import load_builtin_model  # noqa: E402
from omnibyte.models.serialization import load_model, save_model  # noqa: E402

__version__ = "0.3.0"

__all__ = [
    "BOS", "ByteModel", "BytePredictor", "ModelConfig", "OmnibyteError",
    "build_model", "load_builtin_model", "load_model", "make_config", "save_model", "__version__",
]
