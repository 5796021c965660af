"""Model families behind one interface (``base.ByteModel``), their registry and model files."""
from omnibyte.models.base import BOS, BaseConfig, ByteModel, Decoder
from omnibyte.models.flat import BytePredictor, ModelConfig
from omnibyte.models.registry import ARCHITECTURES, build_model, make_config, model_class_for, register

__all__ = [
    "ARCHITECTURES", "BOS", "BaseConfig", "ByteModel", "BytePredictor", "Decoder", "ModelConfig",
    "build_model", "make_config", "model_class_for", "register",
]
