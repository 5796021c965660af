"""Hierarchical families (multiscale N-stage and bGPT fixed-patch) against their contracts."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from omnibyte.cli import main
from omnibyte.data import ByteCorpus, Document
from omnibyte.models import BOS, build_model, make_config
from omnibyte.models.base import masked_cross_entropy
from omnibyte.models.multiscale import MULTISCALE_PRESETS, MultiscaleConfig, MultiscaleModel, StageConfig
from omnibyte.models.multiscale import PATCH_PRESETS, PatchModel, bgpt_stages
from omnibyte.models.serialization import load_model, save_model
from omnibyte.train.trainer import TrainConfig, Trainer
from helpers import random_tokens, one_thread  # noqa: F401 (one_thread is a fixture)

# (arch, preset, overrides): small patches so short sequences cross every kind of boundary
TWO_STAGE = ("multiscale", "tiny", {})
THREE_STAGE = ("multiscale", "tiny-3", {})
PATCH = ("patch", "tiny", {})
MODELS = [TWO_STAGE, THREE_STAGE, PATCH]
IDS = ["2-stage", "3-stage", "patch"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch: str, preset: str, overrides: dict, dtype=torch.float64):
    torch.manual_seed(0)
    return build_model(arch, preset, **overrides).eval().to(dtype)


def stepped_logits(model, tokens: torch.Tensor, prefill: int = 0) -> torch.Tensor:
    decoder = model.decoder(tokens.shape[0], tokens.shape[1])
    logits = [decoder.prefill(tokens[:, :prefill])] if prefill else []
    logits += [decoder.step(tokens[:, t]) for t in range(prefill, tokens.shape[1])]
    return torch.stack(logits, 1)


# ---- shapes and padding -------------------------------------------------------------

@pytest.mark.parametrize("spec", MODELS, ids=IDS)
def test_padding_keeps_every_prefix_identical(spec):
    model = tiny(*spec)
    unit = model.core.unit_sizes[0]  # coarsest patch in tokens: 4 (2-stage, patch), 16 (3-stage)
    tokens = random_tokens(2, 3 * unit + 3)
    with torch.no_grad():
        full = model(tokens)
        # T = 1, T < patch, T one short of / exactly / one past a patch boundary
        for length in (1, 2, unit - 1, unit, unit + 1, 2 * unit + 3):
            logits = model(tokens[:, :length])
            assert logits.shape == (2, length, 256)
            torch.testing.assert_close(logits, full[:, :length], atol=1e-12, rtol=0)


def test_whole_context_fits_and_longer_is_refused():
    model = tiny(*PATCH)
    with torch.no_grad():
        assert model(random_tokens(1, model.max_seq_len)).shape == (1, 512, 256)
        with pytest.raises(ValueError, match="exceeds the context"):
            model(random_tokens(1, model.max_seq_len + 1))


# ---- causality ----------------------------------------------------------------------

@pytest.mark.parametrize("spec", MODELS, ids=IDS)
def test_no_future_leakage_at_any_position(spec):
    model = tiny(*spec)
    length = 2 * model.core.unit_sizes[0] + 5  # crosses coarsest-patch boundaries
    tokens = random_tokens(1, length)
    with torch.no_grad():
        reference = model(tokens)
        for t in range(1, length):
            changed = tokens.clone()
            changed[0, t] = (changed[0, t] + 1) % 256
            logits = model(changed)
            torch.testing.assert_close(logits[:, :t], reference[:, :t], atol=0, rtol=0)
            assert not torch.allclose(logits[:, t], reference[:, t])
            # information does flow forward through the upper stages: the last position,
            # in a later coarsest patch than t for the first patches, changes too
            assert not torch.allclose(logits[:, -1], reference[:, -1])


# ---- cached incremental decoding ------------------------------------------------------

@pytest.mark.parametrize("spec", MODELS, ids=IDS)
def test_cached_steps_equal_full_forward(spec):
    model = tiny(*spec)
    tokens = random_tokens(2, 3 * model.core.unit_sizes[0] + 2)
    with torch.no_grad():
        full = model(tokens)
        torch.testing.assert_close(stepped_logits(model, tokens), full, atol=1e-10, rtol=0)
        torch.testing.assert_close(stepped_logits(model, tokens, prefill=7), full[:, 6:], atol=1e-10, rtol=0)


def test_cached_steps_match_in_float32_up_to_the_last_context_byte():
    model = tiny("patch", "tiny", {"max_sequence_length": 32}, dtype=torch.float32)
    tokens = random_tokens(1, 32)
    with torch.no_grad():
        decoder = model.decoder(1)
        stepped = torch.stack([decoder.step(tokens[:, t]) for t in range(32)], 1)
        torch.testing.assert_close(stepped, model(tokens), atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="context"):
            decoder.step(tokens[:, 0])


def test_upper_stages_run_only_when_a_patch_completes():
    model = tiny(*THREE_STAGE)
    calls = [0, 0, 0]
    for index, stack in enumerate(model.core.stacks):
        stack.register_forward_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    with torch.no_grad():
        decoder = model.decoder(1)
        calls[:] = [0, 0, 0]
        for token in random_tokens(1, 32)[0]:
            decoder.step(token.view(1))
    # 32 bytes: a byte-stage step each; stage 1 every 4 bytes (at 16 and 32 it starts a new
    # 16-byte unit instead of continuing one); stage 0 every 16 bytes
    assert calls == [2, 8, 32]


# ---- losses and memory options -------------------------------------------------------

@pytest.mark.parametrize("spec", [TWO_STAGE, THREE_STAGE], ids=IDS[:2])
def test_chunked_checkpointing_gives_the_same_loss_and_gradients(spec):
    arch, preset, _ = spec
    tokens = random_tokens(2, 45)
    targets = torch.randint(0, 256, (2, 45))
    mask = torch.rand(2, 45) > 0.2
    results = []
    for chunk in (0, 6):
        model = tiny(arch, preset, {"checkpoint_tokens": chunk, "checkpoint_layers": chunk > 0}).train()
        for loss_of in (lambda: model.loss(tokens, targets, mask),
                        lambda: masked_cross_entropy(model(tokens), targets, mask)):
            model.zero_grad()
            loss = loss_of()
            loss.backward()
            results.append((loss.detach().double(), [p.grad.clone() for p in model.parameters()]))
    reference_loss, reference_grads = results[0]
    for loss, grads in results[1:]:
        # the cross-entropy runs in float32 (as the trainer's does), the model in float64
        torch.testing.assert_close(loss, reference_loss, atol=1e-6, rtol=1e-6)
        for grad, expected in zip(grads, reference_grads):
            torch.testing.assert_close(grad, expected, atol=1e-7, rtol=1e-5)


def test_patch_fraction_scores_only_a_random_subset_of_patches_in_training():
    model = tiny("patch", "tiny", {"byte_decoder_patch_fraction": 0.25})
    tokens, targets = random_tokens(2, 64), torch.randint(0, 256, (2, 64))
    rows_seen = []
    model.core.stacks[1].register_forward_hook(lambda _, inputs, __: rows_seen.append(inputs[0].shape[0]))
    with torch.no_grad():
        logits = model(tokens)  # evaluation: every patch
        full = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(-1, 4)
        torch.testing.assert_close(model.loss(tokens, targets), full.mean())
        model.train()
        torch.manual_seed(5)
        loss = model.loss(tokens, targets)
        torch.manual_seed(5)
        chosen = torch.randperm(32)[:8]
    assert rows_seen == [32, 32, 8]  # 2 x 16 patches of 4 bytes, a quarter in training
    torch.testing.assert_close(loss, full[chosen].mean())


def test_extension_header_patch_conditions_the_file():
    model = tiny("patch", "tiny", {"extension_header": True})
    tokens, targets, mask = model.frame(b"hello world", "txt")
    assert tokens[0, :4].tolist() == [BOS, *b"txt"] and targets[0, 3:].tolist() == list(b"hello world")
    assert mask[0].tolist() == [False] * 3 + [True] * 11
    other, _, _ = model.frame(b"hello world", "py")
    assert other[0, :4].tolist() == [BOS, *b"py", 256]
    with torch.no_grad():
        assert not torch.allclose(model(tokens)[:, 3:], model(other)[:, 3:])
    plain = tiny("patch", "tiny", {})
    assert plain.frame(b"abc")[0].tolist() == [[BOS, *b"ab"]]


# ---- configs and accounting ------------------------------------------------------------

@pytest.mark.parametrize("arch,presets", [("multiscale", MULTISCALE_PRESETS), ("patch", PATCH_PRESETS)])
def test_every_preset_round_trips_through_json(arch, presets):
    for preset in presets:
        config = make_config(arch, preset)
        again = type(config).from_json(config.to_json())
        assert again == config
        if arch == "multiscale":
            assert all(isinstance(stage, StageConfig) for stage in again.stages)


def test_preset_shapes():
    assert make_config("multiscale", "long-context").context >= 16_777_216
    assert make_config("multiscale", "megabyte-8k").context == 8192
    patches, byte_stage = make_config("patch", "bgpt").stages
    assert (byte_stage.patch_size, patches.hidden_size, patches.num_layers, byte_stage.num_layers) == (16, 768, 12, 3)
    assert make_config("patch", "bgpt").context == 16384
    assert [s.block for s in make_config("multiscale", "tiny-mamba").stages] == ["mamba", "transformer"]
    with pytest.raises(ValueError, match="at least 2 stages"):
        MultiscaleConfig(stages=[StageConfig(8, 32, 1, 2, 2)]).validate()
    with pytest.raises(ValueError, match="multiple of patch_size"):
        bgpt_stages(patch_size=16, max_sequence_length=100)


def test_flops_per_byte_is_the_sum_of_stages_over_their_unit_sizes():
    model = build_model("multiscale", "tiny-3")
    core = model.core
    stage_flops = sum(stack.config.flops_per_token(context) / unit for stack, context, unit in
                      zip(core.stacks, (512 // 16, 4, 4), core.unit_sizes))
    # embeddings of stage 0 from stage 1 (4 x 48 -> 64), parent projections, head
    extra = 6 * (4 * 48 * 64 / 16 + 64 * 4 * 48 / 16 + 48 * 4 * 32 / 4 + 32 * 256)
    assert model.flops_per_byte(512) == pytest.approx(stage_flops + extra)
    # the top stage's attention term grows with context, everything else does not
    assert model.flops_per_byte(256) < model.flops_per_byte(512)


# ---- mamba stages ---------------------------------------------------------------------

def test_mamba_stage_is_causal_and_caches_exactly():
    pytest.importorskip("omnibyte.models.mamba")
    model = tiny("multiscale", "tiny-mamba", {})
    tokens = random_tokens(1, 13)
    with torch.no_grad():
        reference = model(tokens)
        torch.testing.assert_close(stepped_logits(model, tokens), reference, atol=1e-6, rtol=0)
        for t in (1, 4, 5, 11):
            changed = tokens.clone()
            changed[0, t] = (changed[0, t] + 1) % 256
            torch.testing.assert_close(model(changed)[:, :t], reference[:, :t], atol=0, rtol=0)


# ---- training, checkpoints, CLI ----------------------------------------------------------

def repetitive_corpus() -> ByteCorpus:
    return ByteCorpus([Document("fox.txt", b"the quick brown fox jumps over the lazy dog. " * 100)])


def train_config(**overrides) -> TrainConfig:
    values = dict(seq_len=64, batch_size=8, steps=40, lr=1e-2, eval_every=0, save_every=100,
                  log_every=5, device="cpu")
    return TrainConfig(**{**values, **overrides})


@pytest.mark.parametrize("arch,preset", [("multiscale", "tiny"), ("patch", "tiny")])
def test_loss_falls_with_the_trainer(tmp_path, arch, preset):
    torch.manual_seed(0)
    model = build_model(arch, preset, checkpoint_tokens=64)  # chunked checkpointing in the loop
    result = Trainer(model, repetitive_corpus(), train_config(), tmp_path, progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["bits_per_byte"] > 5
    assert result.train_bits_per_byte < 1.0


def test_save_load_and_exact_resume(tmp_path):
    corpus = repetitive_corpus()
    config = train_config(steps=7, save_every=3, batch_size=4)
    torch.manual_seed(0)
    Trainer(build_model("multiscale", "tiny-3"), corpus, config, tmp_path / "straight", progress=False).fit()

    class Crash(Exception):
        pass

    def crash_at_5(trainer):
        if trainer.step == 5:
            raise Crash()

    torch.manual_seed(0)
    crashed = Trainer(build_model("multiscale", "tiny-3"), corpus, config, tmp_path / "crashed", progress=False)
    crashed.callbacks.append(crash_at_5)
    with pytest.raises(Crash):
        crashed.fit()
    torch.manual_seed(1)
    resumed = Trainer(build_model("multiscale", "tiny-3"), corpus, config, tmp_path / "crashed", progress=False)
    assert resumed.fit(resume=True).step == 7
    expected = load_file(str(tmp_path / "straight" / "model.safetensors"))
    actual = load_file(str(tmp_path / "crashed" / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=0, rtol=0)

    model = tiny(*PATCH, dtype=torch.float32)
    save_model(model, tmp_path / "patch")
    loaded = load_model(tmp_path / "patch")
    assert isinstance(loaded, PatchModel) and loaded.config == model.config
    tokens = random_tokens(2, 30)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), atol=0, rtol=0)
    assert isinstance(load_model(tmp_path / "straight"), MultiscaleModel)


@pytest.mark.parametrize("arch", ["patch", "multiscale"])
def test_cli_train_eval_generate(tmp_path, capsys, arch):
    data = tmp_path / "fox.txt"
    data.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "run"
    assert main(["train", str(data), "--arch", arch, "--preset", "tiny", "--out", str(out), "--steps", "4",
                 "--seq-len", "64", "--batch-size", "4", "--eval-every", "2", "--val-fraction", "0",
                 "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(data), "--model", str(out), "--json", "--device", "cpu", "--context", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == data.stat().st_size and 0 < report["bits_per_byte"] < 9
    sample = tmp_path / "sample.bin"
    assert main(["generate", "--model", str(out), "--prompt", "the ", "--max-bytes", "30", "--seed", "0",
                 "-o", str(sample), "--device", "cpu"]) == 0
    assert len(sample.read_bytes()) == 30
    assert main(["train", str(data), "--out", str(out), "--resume", "--steps", "6", "--device", "cpu",
                 "--no-progress"]) == 0
    assert "resumed from step 4" in capsys.readouterr().out



WIDE_PARENT = ("multiscale", "tiny-3", {"stages": [dict(patch_size=4, hidden_size=512, num_layers=1, num_query_heads=8,
                                                         num_key_value_heads=8),
                                                    dict(patch_size=4, hidden_size=512, num_layers=1, num_query_heads=8,
                                                         num_key_value_heads=8),
                                                    dict(patch_size=4, hidden_size=256, num_layers=1, num_query_heads=4,
                                                         num_key_value_heads=4)]})


@pytest.mark.parametrize("spec", MODELS + [WIDE_PARENT], ids=IDS + ["wide-parent"])
def test_byte_embeddings_are_not_drowned_by_the_parent_context_at_init(spec):
    """The byte stage's input is its byte embedding plus the parent's projected context. When
    the embeddings start far smaller than that context (GPT-2's 0.02 against about
    0.02 * sqrt(D_parent)), the byte identity is noise to the byte stage: a 54M model on the Linux
    source sat at the unigram entropy (5.3 bits/byte) for 150 steps, where it reaches 3.5 with the
    embeddings at N(0, 1) (bench/RESULTS.md, "multiscale init")."""
    arch, preset, overrides = spec
    model = tiny(arch, preset, overrides, dtype=torch.float32)
    core = model.core
    tokens = core.pad(random_tokens(2, model.max_seq_len))
    with torch.no_grad():
        parents, rows = core.parent_outputs(tokens)
        context = core.parent_projs[-1](parents)
        embedded = core.byte_embed(rows)
    ratio = float(embedded.pow(2).mean().sqrt() / context.pow(2).mean().sqrt())
    assert ratio > 1.0, f"byte embeddings at {ratio:.3f} of the context's RMS"
