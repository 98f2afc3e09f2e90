"""``multinomial``: the distribution of its draws, generators, and torch's errors.

The draws come from ddp's generators, not torch's, so no draw is compared with torch's: the
tests check the distribution (exact probabilities against frequencies, with bounds of several
standard deviations, under a fixed seed, so they cannot flake), and the contracts that hold
for any draw.
"""

from __future__ import annotations

import numpy as np
import pytest

import ddp

W = [0.1, 0.0, 0.6, 0.3]  # unnormalised weights are fine; category 1 can never be drawn


def _frequencies(samples: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(samples.ravel(), minlength=n) / samples.size


def test_with_replacement_follows_the_weights():
    ddp.manual_seed(0)
    draws = ddp.multinomial(ddp.tensor(W) * 5, 20000, replacement=True)
    assert draws.dtype == ddp.int64 and tuple(draws.shape) == (20000,)
    freq = _frequencies(draws.numpy(), 4)
    p = np.array(W)
    sigma = np.sqrt(p * (1 - p) / 20000)
    assert freq[1] == 0.0
    assert np.all(np.abs(freq - p) <= 5 * sigma + 1e-12), (freq, p)


def test_without_replacement_rows_are_distinct_and_first_two_draws_are_exact():
    ddp.manual_seed(1)
    rows = ddp.tensor([W] * 20000)
    draws = rows.multinomial(2).numpy()
    assert draws.shape == (20000, 2)
    assert np.all(draws[:, 0] != draws[:, 1]) and not np.any(draws == 1)
    p = np.array(W)
    # first draw: p_i; second draw j after i: p_i * p_j / (1 - p_i)
    pairs = {(i, j): p[i] * p[j] / (1 - p[i]) for i in range(4) for j in range(4) if i != j}
    counts = np.bincount(draws[:, 0] * 4 + draws[:, 1], minlength=16)
    for (i, j), prob in pairs.items():
        sigma = np.sqrt(prob * (1 - prob) / 20000)
        assert abs(counts[i * 4 + j] / 20000 - prob) <= 5 * sigma + 1e-12, (i, j, prob)


def test_all_categories_without_replacement_is_a_permutation():
    out = ddp.multinomial(ddp.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 1.0]]), 3)
    assert sorted(out[0].tolist()) == [0, 1, 2] and sorted(out[1].tolist()) == [0, 1, 2]


def test_zero_weights_come_last_without_replacement(torch):
    for T in (ddp, torch):
        assert T.multinomial(T.tensor([0.0, 0.5, 0.0]), 2).tolist()[0] == 1
    assert ddp.multinomial(ddp.tensor([0.0, 0.5, 0.0]), 3).tolist() == [1, 0, 2]


def test_generator_makes_draws_reproducible_and_independent_of_the_default():
    weights = ddp.tensor([0.2, 0.3, 0.5])
    g = ddp.Generator().manual_seed(7)
    first = ddp.multinomial(weights, 50, True, generator=g)
    ddp.manual_seed(123)
    ddp.rand(10)  # moves the default generator, not g
    g.manual_seed(7)
    again = ddp.multinomial(weights, 50, True, generator=g)
    assert first.tolist() == again.tolist()
    ddp.manual_seed(5)
    a = ddp.multinomial(weights, 50, True)
    ddp.manual_seed(5)
    assert ddp.multinomial(weights, 50, True).tolist() == a.tolist()


@pytest.mark.parametrize("weights,k,replacement,message", [
    ([0.5, -0.1], 1, True, "element < 0"),
    ([0.5, float("nan")], 1, True, "`inf`, `nan`"),
    ([0.0, 0.0], 1, True, r"sum of probabilities <= 0"),
    ([0.5, 0.5], 3, False, "cannot sample n_sample > prob_dist.size"),
    ([[[0.5]]], 1, True, "prob_dist must be 1 or 2 dim"),
])
def test_errors_match_torch(torch, weights, k, replacement, message):
    for T in (ddp, torch):
        with pytest.raises(RuntimeError, match=message):
            T.multinomial(T.tensor(weights), k, replacement)
