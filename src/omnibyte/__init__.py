"""omnibyte: universal byte-level models.

    >>> import omnibyte
    >>> model = omnibyte.build_model("flat", "tiny")
    >>> model.generate(b"hello", max_new_bytes=16)
"""
from omnibyte.errors import OmnibyteError
from omnibyte.models import BOS, ByteModel, BytePredictor, ModelConfig, build_model, make_config
from omnibyte.models.serialization import load_model, save_model

__version__ = "0.2.0"

__all__ = [
    "BOS", "ByteModel", "BytePredictor", "ModelConfig", "OmnibyteError",
    "build_model", "load_model", "make_config", "save_model", "__version__",
]
