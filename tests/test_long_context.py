"""Long contexts in the multiscale family: no kernel sees a tensor past the 32-bit element bound
(checked on a small stand-in for 2**31), pieces change no result, and a step that cannot fit
is refused in one line before it starts."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from omnibyte.devices import check_training_fits
from omnibyte.errors import OmnibyteError
from omnibyte.models.multiscale import core
from omnibyte.models.registry import make_config, model_class_for
from omnibyte.models.validation import ConfigError

# ops whose CUDA kernels index past 2**31 elements (TensorIterator splits element-wise work,
# cat copies in 64 bits) or that only make views: these may see the whole sequence at once
SAFE_PAST_LIMIT = {
    "cat", "view", "_unsafe_view", "reshape", "slice", "split", "split_with_sizes", "unsqueeze", "squeeze",
    "expand", "t", "transpose", "permute", "detach", "alias", "clone", "copy_", "_to_copy", "contiguous",
    "add", "add_", "sub", "mul", "mul_", "div", "fill_", "ones_like", "zeros_like", "zeros", "new_zeros",
    "constant_pad_nd", "unflatten", "flatten", "select", "as_strided", "sum", "empty_like", "lift_fresh",
    "slice_backward",
}


class LargestOutputs(TorchDispatchMode):
    """Records the element count of every op's outputs, by op name."""

    def __init__(self):
        super().__init__()
        self.largest: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        for tensor in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(tensor, torch.Tensor):
                self.largest[name] = max(self.largest.get(name, 0), tensor.numel())
        return result


def _stage(patch_size: int, width: int) -> dict:
    return dict(patch_size=patch_size, hidden_size=width, num_layers=1, num_query_heads=2, num_key_value_heads=1)


# three stages over 256 bytes, every weight smaller than the stand-in bound below
SMALL_STAGES = [_stage(16, 32), _stage(4, 24), _stage(4, 16)]


def _model(**overrides):
    config_class = model_class_for("multiscale").config_class
    config = config_class.from_dict({"stages": SMALL_STAGES, **overrides})
    torch.manual_seed(0)
    return model_class_for("multiscale")(config)


def _loss_and_grads(model, tokens):
    model.zero_grad()
    loss = model.loss(tokens, tokens)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpoint_tokens", [0, 32])
def test_pieces_keep_every_kernel_under_the_bound_and_change_nothing(monkeypatch, checkpoint_tokens):
    model = _model(checkpoint_tokens=checkpoint_tokens)
    tokens = torch.randint(0, 256, (16, model.max_seq_len))
    expected_loss, expected_grads = _loss_and_grads(model, tokens)
    model.eval()
    with torch.no_grad():
        expected_logits = model(tokens)
    model.train()

    # stands in for 2**31: above every weight (their gradients are whole by nature), far
    # below the whole batch's tensors
    limit = 30000
    assert max(parameter.numel() for parameter in model.parameters()) < limit
    monkeypatch.setattr(core, "KERNEL_ELEMENT_LIMIT", limit)
    monkeypatch.setattr(core, "KERNEL_ROW_LIMIT", 7)
    recorder = LargestOutputs()
    with recorder:
        loss, grads = _loss_and_grads(model, tokens)
    model.eval()
    with recorder, torch.no_grad():
        model.core.hidden(tokens)  # the byte states, before the (whole-sequence) head
    with torch.no_grad():
        logits = model(tokens)

    too_large = {name: size for name, size in recorder.largest.items() if size > limit and name not in SAFE_PAST_LIMIT}
    assert not too_large, f"kernels past the bound: {too_large}"
    assert max(recorder.largest.values()) > 2 * limit  # the sequence itself is past it
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_without_the_pieces_the_embedding_sees_the_whole_sequence(monkeypatch):
    """The check above can fail: with pieces off, embedding_bag gets every sub-unit at once."""
    model = _model()
    tokens = torch.randint(0, 256, (16, model.max_seq_len))
    monkeypatch.setattr(core, "KERNEL_ELEMENT_LIMIT", 5000)
    largest = []
    for pieces in (core.pieces_within_limit, lambda elements, limit: 2**40):
        monkeypatch.setattr(core, "pieces_within_limit", pieces)
        recorder = LargestOutputs()
        with recorder:
            model.loss(tokens, tokens).backward()
        largest.append(recorder.largest["_embedding_bag"])
    assert largest[0] <= 5000 < largest[1]


def test_a_top_stage_past_the_bound_is_refused_by_the_config(monkeypatch):
    monkeypatch.setattr(core, "KERNEL_ELEMENT_LIMIT", 16 * 255)  # stage 0's patch of 16, 256 wide (logits)
    with pytest.raises(ConfigError, match=r"stages\[0\]\.patch_size.*fewer, longer units"):
        _model()


def test_training_memory_grows_with_the_context_and_counts_the_optimizer():
    config = make_config("multiscale", "long-context").to_dict()
    model_class = model_class_for("multiscale")

    def estimate(context: int, optimizer: bool = True, batch_size: int = 1) -> float:
        stages = [dict(config["stages"][0], patch_size=context // 256), *config["stages"][1:]]
        with torch.device("meta"):
            model = model_class(model_class.config_class.from_dict(dict(config, stages=stages)))
        return model.training_memory(batch_size, context, optimizer) / 2**30

    # measured on the H200 (bench/RESULTS.md): 16M fits in 29.1 GiB; the estimate stays near it
    assert 27 < estimate(2**24, optimizer=False) < 35
    assert estimate(2**26) < 139 < estimate(2**26, batch_size=2)  # one 64M sequence fits an H200, two do not
    assert estimate(2**24) - estimate(2**24, optimizer=False) == pytest.approx(394.4e6 * 8 / 2**30, rel=0.01)


def test_a_step_that_cannot_fit_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * 2**30)
    check_training_fits(41 * 2**30, torch.device("cuda"), "1 x 16 MB")  # 42 GiB available: fits
    check_training_fits(10**15, torch.device("cpu"), "on the CPU, never checked")
    check_training_fits(None, torch.device("cuda"), "no estimate")
    with pytest.raises(OmnibyteError) as refused:
        check_training_fits(100 * 2**30, torch.device("cuda"), "--batch-size 1 x --seq-len 268,435,456")
    message = str(refused.value)
    assert "\n" not in message
    assert "100.0 GiB" in message and "42.0 GiB" in message and "--seq-len 268,435,456" in message
