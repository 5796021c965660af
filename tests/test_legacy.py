"""Files written by omnibyte 0.1 (before the per-row decoder): run directories load and give the
same logits; compressed streams are refused with a message naming the version."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnibyte.apps.compress import compress, decompress
from omnibyte.errors import OmnibyteError
from omnibyte.models import build_model
from omnibyte.models.serialization import load_model, save_model
from helpers import random_tokens


def split_projections(weights: dict, model) -> dict:
    """Today's fused weights as 0.1 stored them: q/k/v and gate/up separately."""
    old = {}
    for name, tensor in weights.items():
        if name.endswith("attn.qkv_proj.weight"):
            attn = model.get_submodule(name[: -len(".qkv_proj.weight")])
            head_dim = attn.config.head_dim
            sizes = [attn.num_heads * head_dim, attn.num_kv_heads * head_dim, attn.num_kv_heads * head_dim]
            prefix = name[: -len("qkv_proj.weight")]
            for kind, part in zip("qkv", tensor.split(sizes)):
                old[f"{prefix}{kind}_proj.weight"] = part.contiguous()
        elif name.endswith("mlp.gate_up_proj.weight"):
            prefix = name[: -len("gate_up_proj.weight")]
            gate, up = tensor.chunk(2)
            old[prefix + "gate_proj.weight"], old[prefix + "up_proj.weight"] = gate.contiguous(), up.contiguous()
        else:
            old[name] = tensor
    return old


def write_legacy_run(model, directory, config: dict | None = None) -> None:
    """A model directory exactly as omnibyte 0.1 wrote it (no task, split projections)."""
    save_model(model, directory)
    weights = split_projections(load_file(str(directory / "model.safetensors")), model)
    document = {"format": 1, "arch": model.arch, "config": config or model.config.to_dict()}
    save_file(weights, str(directory / "model.safetensors"), metadata={"omnibyte": json.dumps(document)})
    (directory / "config.json").write_text(json.dumps(document))


@pytest.mark.parametrize("arch", ["flat", "multiscale"])
def test_a_0_1_run_directory_loads_with_the_same_logits(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, "tiny").eval()
    write_legacy_run(model, tmp_path / "old")
    assert "layers.0.attn.q_proj.weight" in "".join(load_file(str(tmp_path / "old/model.safetensors")))
    loaded = load_model(tmp_path / "old")
    tokens = random_tokens(2, 30)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), atol=0, rtol=0)


def test_a_0_1_patch_run_with_bgpt_fields_loads(tmp_path):
    torch.manual_seed(0)
    model = build_model("patch", "tiny").eval()
    legacy_config = dict(  # PatchConfig of 0.1, as its tiny preset saved it
        patch_size=4, hidden_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        intermediate_size=192, byte_hidden_size=32, byte_num_layers=1, byte_num_query_heads=2,
        byte_num_key_value_heads=1, byte_intermediate_size=128, max_sequence_length=512,
        byte_decoder_patch_fraction=1.0, extension_header=False, rope_theta=10000.0, norm_eps=1e-6,
        qk_norm=True, checkpoint_tokens=0, checkpoint_layers=False)
    write_legacy_run(model, tmp_path / "old", legacy_config)
    loaded = load_model(tmp_path / "old")
    assert loaded.config == model.config
    tokens = random_tokens(1, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), atol=0, rtol=0)


def test_a_0_1_stream_is_refused_by_name():
    torch.manual_seed(0)
    model = build_model("flat", "tiny").eval()
    blob = bytearray(compress(b"hello hello hello", model))
    assert decompress(bytes(blob), model) == b"hello hello hello"
    blob[4] = 1  # the version byte of omnibyte 0.1's streams
    with pytest.raises(OmnibyteError, match="version 1 was made by omnibyte 0.1"):
        decompress(bytes(blob), model)


# ---- files really written by omnibyte 0.1 (commit 9aca142), kept in tests/fixtures/v0.1 ----------

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1"


@pytest.mark.parametrize("name", ["flat", "patch", "multiscale"])
def test_run_directories_written_by_0_1_load_with_their_logits(name):
    expected = load_file(str(FIXTURES / "expected_logits.safetensors"))  # computed by 0.1 itself
    model = load_model(FIXTURES / name)
    assert model.arch == name
    with torch.no_grad():
        torch.testing.assert_close(model(expected["tokens"]), expected[name], atol=1e-5, rtol=1e-5)


def test_a_stream_written_by_0_1_is_refused_by_name():
    model = load_model(FIXTURES / "flat")
    with pytest.raises(OmnibyteError, match="version 1 was made by omnibyte 0.1"):
        decompress((FIXTURES / "flat.omb").read_bytes(), model)
