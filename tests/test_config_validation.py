"""One validation layer for every config: types, ranges and cross-field rules with messages that
name the field, the same through ``--set`` (make_config), config.json and the Python API, and
a size limit applied before anything is allocated."""
import json
import math

import pytest
import torch

from omnibyte.errors import OmnibyteError
from omnibyte.models import ARCHITECTURES, build_model, make_config
from omnibyte.models.flat import ModelConfig
from omnibyte.models.layers import StackConfig
from omnibyte.models.mamba import MambaStack
from omnibyte.models.multiscale import MultiscaleConfig, StageConfig
from omnibyte.models.serialization import CONFIG_FILE, load_model, save_model
from omnibyte.models.validation import (
    DEFAULT_MAX_PARAMETERS,
    MAX_PARAMETERS_ENV,
    ConfigError,
    max_parameters,
    model_size_limit,
)
from omnibyte.train.trainer import TrainConfig

TWO_STAGES = [dict(patch_size=8, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=1),
              dict(patch_size=4, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=1)]


def stages_with(index: int, **change) -> list[dict]:
    stages = [dict(stage) for stage in TWO_STAGES]
    stages[index].update(change)
    return stages


# (arch, --set overrides, the message's start: it names the field first)
BAD_OVERRIDES = [
    ("flat", dict(hidden_size=-64), "hidden_size must be an integer in [1, 65536], got -64"),
    ("flat", dict(hidden_size="64"), "hidden_size must be an integer, got '64'"),
    ("flat", dict(hidden_size=64.0), "hidden_size must be an integer, got 64.0"),
    ("flat", dict(hidden_size=1e9), "hidden_size must be an integer, got 1000000000.0"),
    ("flat", dict(hidden_size=10**9), "hidden_size must be an integer in [1, 65536]"),
    ("flat", dict(hidden_size=True), "hidden_size must be an integer, got True"),
    ("flat", dict(num_query_heads=0), "num_query_heads must be an integer in [1, 1024], got 0"),
    ("flat", dict(num_key_value_heads=0), "num_key_value_heads must be an integer in [1, 1024], got 0"),
    ("flat", dict(num_key_value_heads=3), "num_key_value_heads must divide num_query_heads (4), got 3"),
    ("flat", dict(num_key_value_heads=8), "num_key_value_heads must divide num_query_heads (4), got 8"),
    ("flat", dict(hidden_size=66), "hidden_size must be a multiple of num_query_heads (4), got 66"),
    ("flat", dict(hidden_size=36), "hidden_size / num_query_heads (the head dimension) must be even"),
    ("flat", dict(num_layers=10**6), "num_layers must be an integer in [1, 1024]"),
    ("flat", dict(num_layers=-1), "num_layers must be an integer in [1, 1024], got -1"),
    ("flat", dict(max_sequence_length=1e9), "max_sequence_length must be an integer, got 1000000000.0"),
    ("flat", dict(max_sequence_length=10**9), "max_sequence_length must be an integer in [1, 2**24]"),
    ("flat", dict(max_sequence_length=1024.5), "max_sequence_length must be an integer, got 1024.5"),
    ("flat", dict(max_sequence_length=0), "max_sequence_length must be an integer in [1, 2**24], got 0"),
    ("flat", dict(intermediate_size=-5), "intermediate_size must be an integer in [0, 2**20], got -5"),
    ("flat", dict(qk_norm="no"), "qk_norm must be true or false, got 'no'"),
    ("flat", dict(qk_norm=0), "qk_norm must be true or false, got 0"),
    ("flat", dict(norm_eps=math.nan), "norm_eps must be a finite number, got nan"),
    ("flat", dict(norm_eps=0), "norm_eps must be a number in (0, 1], got 0.0"),
    ("flat", dict(norm_eps=2), "norm_eps must be a number in (0, 1], got 2.0"),
    ("flat", dict(rope_theta=math.inf), "rope_theta must be a finite number, got inf"),
    ("flat", dict(rope_theta=-1.0), "rope_theta must be a number > 0, got -1.0"),
    ("flat", dict(rope_theta="big"), "rope_theta must be a number, got 'big'"),
    ("flat", dict(vocab_size=257), "vocab_size must be 256, got 257"),
    ("flat", dict(hidden=64), "unknown ModelConfig field 'hidden'"),
    ("multiscale", dict(stages=stages_with(0, hidden_size=-64)), "stages[0].hidden_size must be an integer in [1, 65536]"),
    ("multiscale", dict(stages=stages_with(1, hidden_size="32")), "stages[1].hidden_size must be an integer, got '32'"),
    ("multiscale", dict(stages=stages_with(1, hidden_size=31)), "stages[1].hidden_size must be a multiple of num_query_heads (2)"),
    ("multiscale", dict(stages=stages_with(0, patch_size=0)), "stages[0].patch_size must be an integer in [1, 2**24], got 0"),
    ("multiscale", dict(stages=stages_with(0, patch_size=2.5)), "stages[0].patch_size must be an integer, got 2.5"),
    ("multiscale", dict(stages=stages_with(1, num_key_value_heads=3)), "stages[1].num_key_value_heads must divide"),
    ("multiscale", dict(stages=stages_with(0, block="rnn")), "stages[0].block must be one of transformer, mamba, got 'rnn'"),
    ("multiscale", dict(stages=stages_with(0, blocks=2)), "stages[0]: unknown StageConfig field 'blocks'"),
    ("multiscale", dict(stages=stages_with(0, block="mamba", hidden_size=0)), "stages[0].hidden_size must be an integer"),
    ("multiscale", dict(stages=stages_with(0, block="mamba", num_layers=2000)), "stages[0].num_layers must be an integer"),
    ("multiscale", dict(stages=TWO_STAGES[:1]), "stages must hold at least 2 stages"),
    ("multiscale", dict(stages="two"), "stages must be a list, got str"),
    ("multiscale", dict(stages=[3, 4]), "stages[0]: must be an object (StageConfig), got int"),
    ("multiscale", dict(stages=stages_with(0, patch_size=2**24) + [dict(TWO_STAGES[1], patch_size=2**10)]),
     "stages give a context of"),
    ("multiscale", dict(norm_eps=math.nan), "norm_eps must be a finite number, got nan"),
    ("multiscale", dict(checkpoint_tokens=-1), "checkpoint_tokens must be an integer in [0, 2**30], got -1"),
    ("multiscale", dict(checkpoint_layers="yes"), "checkpoint_layers must be true or false, got 'yes'"),
    ("multiscale", dict(byte_decoder_patch_fraction=0), "byte_decoder_patch_fraction must be a number in (0, 1], got 0.0"),
    ("multiscale", dict(byte_decoder_patch_fraction=math.nan), "byte_decoder_patch_fraction must be a finite number"),
    ("patch", dict(hidden_size=-64), "hidden_size must be an integer in [1, 65536], got -64"),
    ("patch", dict(byte_hidden_size="64"), "byte_hidden_size must be an integer, got '64'"),
    ("patch", dict(patch_size=3), "max_sequence_length must be a multiple of patch_size (3), got 512"),
    ("patch", dict(patch_size=0), "patch_size must be an integer in [1, 2**24], got 0"),
    ("patch", dict(num_query_heads=3), "stages[0].hidden_size must be a multiple of num_query_heads (3)"),
    ("patch", dict(stages=[1, 2, 3], patch_size=4), "stages must be two stages (patches, then bytes)"),
]


@pytest.mark.parametrize("arch, overrides, message", BAD_OVERRIDES)
def test_bad_overrides_name_the_field_and_the_range(arch, overrides, message):
    with pytest.raises(ConfigError) as error:
        make_config(arch, "tiny", **overrides)
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)
    assert isinstance(error.value, ValueError) and isinstance(error.value, OmnibyteError)


@pytest.mark.parametrize("arch, overrides, message", [case for case in BAD_OVERRIDES if case[0] != "patch"])
def test_config_json_with_a_bad_value_is_one_line_naming_the_file_and_field(tmp_path, arch, overrides, message):
    save_model(build_model(arch, "tiny"), tmp_path)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    if "stages" in overrides:
        document["config"]["stages"] = overrides["stages"]
    else:
        document["config"].update(overrides)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(OmnibyteError) as error:
        load_model(tmp_path)
    text = str(error.value)
    assert text.startswith(f"{tmp_path / CONFIG_FILE}: invalid model config: {message}"), text
    assert "\n" not in text


def test_a_bad_config_document_is_refused_before_the_family_sees_it(tmp_path):
    save_model(build_model("flat", "tiny"), tmp_path)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    for change, message in [({"config": [1, 2]}, "'config' must be an object"),
                            ({"arch": ["flat"]}, "'arch' must be a name"),
                            ({"arch": "rnn"}, "unknown architecture 'rnn'"),
                            ({"step": -3}, "'step' must be a training step")]:
        (tmp_path / CONFIG_FILE).write_text(json.dumps({**document, **change}))
        with pytest.raises(OmnibyteError, match=message):
            load_model(tmp_path)


def test_python_api_validates_on_construction_and_the_messages_match():
    with pytest.raises(ConfigError, match=r"^hidden_size must be an integer in \[1, 65536\], got -64$"):
        ModelConfig(hidden_size=-64)  # before: "intermediate_size must be positive"
    with pytest.raises(ConfigError, match="^hidden_size must be an integer, got '64'$"):
        ModelConfig(hidden_size="64")
    with pytest.raises(ConfigError, match="^qk_norm must be true or false"):
        ModelConfig(qk_norm="no")
    with pytest.raises(ConfigError, match="^hidden_size must be an integer"):
        StageConfig(patch_size=4, hidden_size=2.5, num_layers=1)
    with pytest.raises(ConfigError, match="^stages must hold at least 2 stages"):
        MultiscaleConfig(stages=[StageConfig(8, 32, 1, 2, 2)])
    config = ModelConfig(hidden_size=64, num_query_heads=4, num_key_value_heads=2, rope_theta=500)
    assert isinstance(config.rope_theta, float)  # numbers are coerced to the field's type
    config.hidden_size = 65  # changed after construction: the model checks again
    with pytest.raises(ConfigError, match="^hidden_size must be a multiple of num_query_heads"):
        build_model("flat", "tiny").__class__(config)


def test_stack_and_mamba_arguments_name_the_argument():
    with pytest.raises(ConfigError, match="^intermediate_size must be an integer in"):
        StackConfig(64, 2, 4, 2, 0, 128).validate()
    with pytest.raises(ConfigError, match="^norm_eps must be a finite number"):
        StackConfig(64, 2, 4, 2, 128, 128, norm_eps=math.nan).validate()
    with pytest.raises(ConfigError, match=r"^state_size must be an integer in \[1, 1024\], got 0"):
        MambaStack(hidden_size=16, num_layers=1, state_size=0)
    with pytest.raises(ConfigError, match="^expand must be an integer, got 1.5"):
        MambaStack(hidden_size=16, num_layers=1, expand=1.5)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_preset_passes_the_size_limit_and_the_estimate_is_exact(arch):
    presets = ARCHITECTURES[arch][1]
    for preset in presets:
        size = make_config(arch, preset).estimate_size()
        assert size.parameters <= DEFAULT_MAX_PARAMETERS and size.build_bytes <= 4 * DEFAULT_MAX_PARAMETERS
    for preset in presets:  # the small ones are built: the estimate is their exact count
        size = make_config(arch, preset).estimate_size()
        if size.parameters < 1_000_000:
            assert build_model(arch, preset).num_parameters() == size.parameters


def test_models_above_the_limit_are_refused_before_allocating(monkeypatch):
    allocated = []
    monkeypatch.setattr(torch.nn.Linear, "__init__", lambda *a, **k: allocated.append(1))
    with pytest.raises(OmnibyteError, match=r"15,529,798,656 parameters, above the limit of 2,000,000,000; "
                                            r"pass --allow-large"):
        build_model("flat", "1b", hidden_size=8192)
    with pytest.raises(OmnibyteError, match=r"building the model would take about 68.8 GB"):
        build_model("flat", "tiny", hidden_size=1024, num_query_heads=8, max_sequence_length=2**24)
    assert allocated == []


def test_the_limit_can_be_raised_by_context_or_environment(monkeypatch):
    config = make_config("flat", "tiny")
    assert config.estimate_size().parameters == 131_520
    with model_size_limit(100_000):
        with pytest.raises(OmnibyteError, match="above the limit of 100,000"):
            build_model("flat", "tiny")
        with model_size_limit(None):
            build_model("flat", "tiny")
    monkeypatch.setenv(MAX_PARAMETERS_ENV, "100000")
    assert max_parameters() == 100_000
    with pytest.raises(OmnibyteError, match="above the limit"):
        build_model("flat", "tiny")
    monkeypatch.setenv(MAX_PARAMETERS_ENV, "0")
    assert max_parameters() is None
    monkeypatch.setenv(MAX_PARAMETERS_ENV, "lots")
    with pytest.raises(OmnibyteError, match=f"{MAX_PARAMETERS_ENV} must be a whole number"):
        max_parameters()


def test_a_config_json_above_the_limit_names_the_file(tmp_path, monkeypatch):
    save_model(build_model("flat", "tiny"), tmp_path)
    monkeypatch.setenv(MAX_PARAMETERS_ENV, "1000")
    with pytest.raises(OmnibyteError, match=f"^{tmp_path / CONFIG_FILE}: the model would have 131,520"):
        load_model(tmp_path)


@pytest.mark.parametrize("change, message", [
    (dict(save_every=-1), "save_every must be an integer in [0, 2**40], got -1"),
    (dict(log_every=0), "log_every must be an integer in [1, 2**40], got 0"),
    (dict(seq_len=0), "seq_len must be an integer in [1, 2**30], got 0"),
    (dict(batch_size=-1), "batch_size must be an integer in [1, 2**20], got -1"),
    (dict(steps=2.5), "steps must be an integer, got 2.5"),
    (dict(lr=0), "lr must be a number > 0, got 0.0"),
    (dict(lr=math.nan), "lr must be a finite number, got nan"),
    (dict(beta2=1.0), "beta2 must be a number in [0, 1), got 1.0"),
    (dict(min_lr_ratio=2), "min_lr_ratio must be a number in [0, 1], got 2.0"),
    (dict(warmup_steps=-2), "warmup_steps must be an integer in [-1, 2**40], got -2"),
    (dict(grad_clip=-1), "grad_clip must be a number >= 0, got -1.0"),
    (dict(time_limit=math.inf), "time_limit must be a finite number, got inf"),
    (dict(seed=-1), "seed must be an integer in [0, 9223372036854775807], got -1"),
    (dict(compile="yes"), "compile must be true or false, got 'yes'"),
    (dict(device="tpu"), "device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
])
def test_train_config_fields_are_ranged(change, message):
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict(change)
    assert str(error.value) == message
    with pytest.raises(ConfigError):
        TrainConfig(**change)
