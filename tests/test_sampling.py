"""Per-row counter-based sampling against the distribution it must draw from."""
import numpy as np
import torch

from omnibyte.sampling import GumbelNoise, row_uniforms, sample_next


def draws(logits: torch.Tensor, count: int, **options) -> np.ndarray:
    noise = GumbelNoise(torch.tensor([12345]), block=64)
    return np.array([int(sample_next(logits, noise=noise(step), **options)) for step in range(count)])


def test_samples_follow_the_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0] + [-30.0] * 252])
    expected = torch.softmax(logits[0, :4], -1).numpy()
    counts = np.bincount(draws(logits, 4000), minlength=256)[:4]
    # chi-square with 3 degrees of freedom: 16.3 is its 0.999 quantile
    chi_square = (((counts - 4000 * expected) ** 2) / (4000 * expected)).sum()
    assert counts.sum() == 4000 and chi_square < 16.3


def test_temperature_top_k_and_top_p():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0] + [-9.0] * 252])
    assert set(draws(logits, 200, temperature=2.0, top_k=2)) == {0, 1}
    assert set(draws(logits, 100, top_p=0.5)) == {0}
    assert set(draws(logits, 20, temperature=0)) == {0}
    hot = draws(logits, 2000, temperature=3.0)
    assert (hot >= 4).mean() > 0.1  # high temperature reaches the tail


def test_a_row_draws_the_same_whatever_batch_it_is_in():
    torch.manual_seed(0)
    logits = torch.randn(5, 256)
    seeds = torch.tensor([1, 2, 3, 2**40 + 7, 5])
    batched_noise = GumbelNoise(seeds, block=8)
    alone_noise = [GumbelNoise(seeds[i:i + 1], block=3) for i in range(5)]  # other block sizes too
    for step in range(20):
        batched = sample_next(logits, 0.9, 50, 0.95, batched_noise(step))
        alone = torch.cat([sample_next(logits[i:i + 1], 0.9, 50, 0.95, alone_noise[i](step)) for i in range(5)])
        assert torch.equal(batched, alone)


def test_uniforms_are_in_the_open_interval_and_depend_on_seed_and_step():
    uniforms = row_uniforms(torch.tensor([0, 1]), torch.arange(3), 256)
    assert uniforms.shape == (2, 3, 256) and uniforms.min() > 0 and uniforms.max() < 1
    assert not torch.equal(uniforms[0], uniforms[1])
    assert not torch.equal(uniforms[:, 0], uniforms[:, 1])
    torch.testing.assert_close(uniforms[:, 2:], row_uniforms(torch.tensor([0, 1]), torch.tensor([2]), 256))
    assert abs(float(uniforms.mean()) - 0.5) < 0.05


def test_noise_at_per_row_steps_equals_the_noise_of_each_step():
    seeds = torch.tensor([3, 99, 12345])
    noise = GumbelNoise(seeds, block=16)
    # inside one block (gathered from its table) and straddling two (hashed directly)
    for steps in (np.array([[0, 1, 2], [5, 6, 7], [13, 14, 15]]), np.array([[14, 15, 16], [2, 3, 4], [30, 31, 32]])):
        got = noise.at(steps)
        assert got.shape == (3, 3, 256)
        for row in range(3):
            for column in range(3):
                assert torch.equal(got[row, column], GumbelNoise(seeds, block=7)(int(steps[row, column]))[row])
