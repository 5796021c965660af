"""Model families behind one interface (``base.ByteModel``), their registry and model files."""
from omnibyte.models.base import BOS, BaseConfig, ByteModel, Decoder
from omnibyte.models.flat import BytePredictor, ModelConfig
from omnibyte.models.registry import ARCHITECTURES, build_model, make_config, model_class_for, register
# BLT registers itself here rather than in the registry: its entropy model is loaded through
# omnibyte.models.serialization, which needs the registry (a cycle if the registry imported BLT)
from omnibyte.models.blt import BLT_PRESETS, BLTModel  # noqa: E402

register(BLTModel, BLT_PRESETS)

__all__ = [
    "ARCHITECTURES", "BOS", "BaseConfig", "ByteModel", "BytePredictor", "Decoder", "ModelConfig",
    "build_model", "make_config", "model_class_for", "register",
]
