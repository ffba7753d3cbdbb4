"""Seeded statistical tests: realised inclusion frequencies match inclusion_probabilities().

Tolerance: each block's count over DRAWS draws is tested against Binomial(DRAWS, pi_l) with a
two-sided exact binomial test; a sampler fails when any block's p-value is below
FAMILY_ALPHA / num_blocks (Bonferroni over the blocks, family-wise false alarm rate 1e-3). The
seeds are fixed, so every run gives the same verdict.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from lisa.samplers import available_samplers, make_sampler

DRAWS = 21_000  # a multiple of every cyclic cycle length below, so cyclic counts are exact
FAMILY_ALPHA = 1e-3
SEED = 20240326

# A skewed target: one sure block, one impossible block, and a long tail (sum = 3).
SKEWED_PI = [1.0, 0.9, 0.5, 0.3, 0.2, 0.1, 0.0]

CONFIGS = {
    "uniform": [{"num_blocks": 8, "gamma": 3}],
    "weighted": [
        {"num_blocks": 7, "inclusion_probabilities": SKEWED_PI},
        {"num_blocks": 6, "scores": [40.0, 8.0, 4.0, 2.0, 1.0, 0.0], "gamma": 2, "floor": 0.05},
    ],
    "fixed": [{"num_blocks": 6, "blocks": (1, 4)}],
    "bernoulli": [{"num_blocks": 6, "probabilities": [1.0, 0.8, 0.3, 0.05, 0.5, 0.0]}],
    "cyclic": [
        {"num_blocks": 7, "gamma": 3, "order": "random"},
        {"num_blocks": 5, "gamma": 2, "order": "descending"},
    ],
}


def realised_frequencies(sample, num_blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.zeros(num_blocks, dtype=np.int64)
    for _ in range(DRAWS):
        counts[list(sample(rng))] += 1
    return counts


def binomial_p_values(counts: np.ndarray, pi: np.ndarray) -> np.ndarray:
    return np.array(
        [stats.binomtest(int(k), DRAWS, float(p)).pvalue for k, p in zip(counts, pi, strict=True)]
    )


@pytest.mark.parametrize(
    ("name", "config"),
    [
        pytest.param(name, config, id=f"{name}-{i}")
        for name in available_samplers()
        for i, config in enumerate(CONFIGS.get(name, [None]))
    ],
)
def test_realised_inclusion_frequencies_match_inclusion_probabilities(name, config):
    if config is None:
        pytest.fail(f"registered sampler {name!r} has no statistical test config in CONFIGS")
    config = dict(config)
    num_blocks = config.pop("num_blocks")
    sampler = make_sampler(name, num_blocks, **config)
    pi = sampler.inclusion_probabilities()
    counts = realised_frequencies(sampler.sample, num_blocks, SEED)
    p_values = binomial_p_values(counts, pi)
    assert p_values.min() >= FAMILY_ALPHA / num_blocks, (
        f"{name}: frequencies {np.round(counts / DRAWS, 4)} vs pi {np.round(pi, 4)}, "
        f"p-values {p_values}"
    )
    # Impossible and sure blocks are exact, not just likely.
    assert np.all(counts[pi == 0] == 0)
    assert np.all(counts[pi == 1] == DRAWS)


def test_every_builtin_sampler_has_a_statistical_config():
    assert set(CONFIGS) == {"uniform", "weighted", "fixed", "bernoulli", "cyclic"}
    assert {"uniform", "weighted", "fixed", "bernoulli", "cyclic"} <= set(available_samplers())


def test_cyclic_frequencies_are_exact_over_whole_cycles():
    sampler = make_sampler("cyclic", 7, gamma=3, order="random")
    counts = realised_frequencies(sampler.sample, 7, SEED)
    assert DRAWS % (math.lcm(7, 3) // 3) == 0
    np.testing.assert_array_equal(counts, np.full(7, DRAWS * 3 // 7))


def test_uniform_sampler_draws_every_subset_equally_often():
    # Equal marginals are not enough for "uniform": every gamma-subset must be equally likely.
    # Chi-square goodness of fit over the 15 subsets, rejected at 1e-3.
    num_blocks, gamma = 6, 2
    sampler = make_sampler("uniform", num_blocks, gamma=gamma)
    rng = np.random.default_rng(SEED)
    subsets = list(itertools.combinations(range(num_blocks), gamma))
    index = {s: i for i, s in enumerate(subsets)}
    observed = np.zeros(len(subsets))
    for _ in range(DRAWS // 2):
        observed[index[sampler.sample(rng)]] += 1
    assert stats.chisquare(observed).pvalue >= FAMILY_ALPHA


def test_weighted_sampler_pairs_every_two_possible_blocks():
    # The random order before the systematic pass is what lets any two blocks with pi in (0, 1)
    # appear together; without it some pairs would never be drawn at all.
    pi = [0.5, 0.5, 0.5, 0.5]
    sampler = make_sampler("weighted", 4, inclusion_probabilities=pi)
    rng = np.random.default_rng(SEED)
    pairs = {sampler.sample(rng) for _ in range(2_000)}
    assert pairs == set(itertools.combinations(range(4), 2))


def test_naive_weighted_choice_misses_the_target_but_the_weighted_sampler_hits_it():
    # np.random.Generator.choice(N, gamma, replace=False, p=pi/gamma) draws one block at a time
    # and renormalises, so a block's inclusion probability is not gamma * p once gamma > 1:
    # on SKEWED_PI the sure block (pi = 1) is missed in about a fifth of the draws.
    pi = np.array(SKEWED_PI)
    num_blocks, gamma = pi.size, round(pi.sum())

    def naive(rng: np.random.Generator) -> tuple[int, ...]:
        return tuple(rng.choice(num_blocks, size=gamma, replace=False, p=pi / pi.sum()))

    naive_counts = realised_frequencies(naive, num_blocks, SEED)
    naive_error = np.abs(naive_counts / DRAWS - pi)
    naive_p_values = binomial_p_values(naive_counts, pi)
    assert naive_error.max() > 0.1, f"naive frequencies {naive_counts / DRAWS} vs pi {pi}"
    assert naive_p_values.min() < 1e-100
    assert naive_counts[0] < 0.9 * DRAWS  # the pi = 1 block is left out

    sampler = make_sampler("weighted", num_blocks, inclusion_probabilities=pi)
    counts = realised_frequencies(sampler.sample, num_blocks, SEED)
    # 0.015 is about 4.6 standard errors of a frequency at pi = 0.5 over DRAWS draws.
    assert np.abs(counts / DRAWS - pi).max() < 0.015
    assert binomial_p_values(counts, pi).min() >= FAMILY_ALPHA / num_blocks
