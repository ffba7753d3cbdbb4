"""Contract suite over every registered sampler, score-to-pi properties, and input validation."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lisa.samplers import (
    BernoulliSampler,
    CyclicSampler,
    FixedSampler,
    Sampler,
    StatefulSampler,
    UniformSampler,
    WeightedSampler,
    available_samplers,
    inclusion_probabilities_from_scores,
    make_sampler,
    register_sampler,
    systematic_sample,
)

DRAWS_PER_EXAMPLE = 12

# ---------------------------------------------------------------------------------------------
# strategies: one per registry name, each giving (num_blocks, kwargs) valid for make_sampler

# Scores with exact zeros mixed in: zero scores are where "pi = 0 is never drawn" bites.
score_values = st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1e3))


@st.composite
def scores_and_gamma(draw, max_blocks: int = 12):
    scores = draw(st.lists(score_values, min_size=1, max_size=max_blocks))
    positive = sum(s > 0 for s in scores)
    assume(positive > 0)
    gamma = draw(st.integers(min_value=1, max_value=positive))
    return scores, gamma


@st.composite
def uniform_kwargs(draw):
    num_blocks = draw(st.integers(min_value=1, max_value=12))
    return num_blocks, {"gamma": draw(st.integers(min_value=0, max_value=num_blocks))}


@st.composite
def weighted_kwargs(draw):
    scores, gamma = draw(scores_and_gamma())
    num_blocks = len(scores)
    temperature = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    floor = draw(st.sampled_from([0.0, 0.0, 0.5])) * gamma / num_blocks
    if draw(st.booleans()):
        kwargs = {"scores": scores, "gamma": gamma, "temperature": temperature, "floor": floor}
        return num_blocks, kwargs
    pi = inclusion_probabilities_from_scores(scores, gamma, temperature=temperature, floor=floor)
    # As read back from a JSON policy: a list of floats that sums to gamma only up to rounding.
    return num_blocks, {"inclusion_probabilities": [float(p) for p in pi]}


@st.composite
def fixed_kwargs(draw):
    num_blocks = draw(st.integers(min_value=1, max_value=12))
    blocks = draw(st.lists(st.integers(0, num_blocks - 1), unique=True, max_size=num_blocks))
    return num_blocks, {"blocks": tuple(blocks)}


@st.composite
def bernoulli_kwargs(draw):
    probability = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(min_value=0.0, max_value=1.0))
    probabilities = draw(st.lists(probability, min_size=1, max_size=12))
    assume(any(p > 0 for p in probabilities))
    return len(probabilities), {"probabilities": probabilities}


@st.composite
def cyclic_kwargs(draw):
    num_blocks = draw(st.integers(min_value=1, max_value=12))
    gamma = draw(st.integers(min_value=0, max_value=num_blocks))
    order = draw(st.sampled_from(["ascending", "descending", "random"]))
    return num_blocks, {"gamma": gamma, "order": order}


STRATEGIES = {
    "uniform": uniform_kwargs(),
    "weighted": weighted_kwargs(),
    "fixed": fixed_kwargs(),
    "bernoulli": bernoulli_kwargs(),
    "cyclic": cyclic_kwargs(),
}
FIXED_SIZE = ("uniform", "weighted", "fixed", "cyclic")
REGISTERED = available_samplers()  # at collection: the built-ins and any registered on import


def sampler_configs(name: str):
    if name not in STRATEGIES:
        pytest.fail(
            f"registered sampler {name!r} has no hypothesis strategy: add one to STRATEGIES in "
            "tests/lisa/test_samplers.py so the contract suite covers it"
        )
    return STRATEGIES[name]


def draws(sampler: Sampler, seed: int, count: int = DRAWS_PER_EXAMPLE) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [sampler.sample(rng) for _ in range(count)]


seeds = st.integers(min_value=0, max_value=2**32 - 1)


def test_every_builtin_sampler_is_registered_and_has_a_strategy():
    builtins = {"uniform", "weighted", "fixed", "bernoulli", "cyclic"}
    assert builtins <= set(REGISTERED)
    assert set(REGISTERED) <= set(STRATEGIES), "a registered sampler lacks a strategy"


# ---------------------------------------------------------------------------------------------
# the contract: every registered sampler


@pytest.mark.parametrize("name", REGISTERED)
@given(data=st.data())
def test_sampler_satisfies_the_protocol(name, data):
    num_blocks, kwargs = data.draw(sampler_configs(name))
    sampler = make_sampler(name, num_blocks, **kwargs)
    assert isinstance(sampler, Sampler)
    assert sampler.num_blocks == num_blocks
    pi = sampler.inclusion_probabilities()
    assert pi.shape == (num_blocks,)
    assert np.all((pi >= 0) & (pi <= 1))


@pytest.mark.parametrize("name", REGISTERED)
@given(data=st.data(), seed=seeds)
def test_sample_size_matches_the_design(name, data, seed):
    num_blocks, kwargs = data.draw(sampler_configs(name))
    sampler = make_sampler(name, num_blocks, **kwargs)
    pi = sampler.inclusion_probabilities()
    for active in draws(sampler, seed):
        if name in FIXED_SIZE:
            assert len(active) == sampler.gamma
        else:  # a variable-size design: at least the sure blocks, at most the possible ones
            assert np.sum(pi == 1) <= len(active) <= np.sum(pi > 0)


@pytest.mark.parametrize("name", REGISTERED)
@given(data=st.data(), seed=seeds)
def test_draws_are_sorted_unique_and_in_range(name, data, seed):
    num_blocks, kwargs = data.draw(sampler_configs(name))
    sampler = make_sampler(name, num_blocks, **kwargs)
    for active in draws(sampler, seed):
        assert isinstance(active, tuple)
        assert all(type(b) is int for b in active)  # JSON-able, no numpy scalars
        assert list(active) == sorted(set(active))
        assert all(0 <= b < num_blocks for b in active)


@pytest.mark.parametrize("name", REGISTERED)
@given(data=st.data(), seed=seeds)
def test_draws_are_deterministic_for_a_seed(name, data, seed):
    num_blocks, kwargs = data.draw(sampler_configs(name))
    first = draws(make_sampler(name, num_blocks, **kwargs), seed)
    second = draws(make_sampler(name, num_blocks, **kwargs), seed)
    assert first == second


@pytest.mark.parametrize("name", REGISTERED)
@given(data=st.data(), seed=seeds)
def test_zero_probability_blocks_are_never_drawn(name, data, seed):
    num_blocks, kwargs = data.draw(sampler_configs(name))
    sampler = make_sampler(name, num_blocks, **kwargs)
    never = set(np.flatnonzero(sampler.inclusion_probabilities() == 0).tolist())
    for active in draws(sampler, seed):
        assert never.isdisjoint(active)


@pytest.mark.parametrize("name", REGISTERED)
@given(data=st.data(), seed=seeds)
def test_probability_one_blocks_are_always_drawn(name, data, seed):
    num_blocks, kwargs = data.draw(sampler_configs(name))
    sampler = make_sampler(name, num_blocks, **kwargs)
    always = set(np.flatnonzero(sampler.inclusion_probabilities() == 1).tolist())
    for active in draws(sampler, seed):
        assert always <= set(active)


@pytest.mark.parametrize("name", [n for n in REGISTERED if n in FIXED_SIZE])
@given(data=st.data())
def test_inclusion_probabilities_sum_to_gamma(name, data):
    num_blocks, kwargs = data.draw(sampler_configs(name))
    sampler = make_sampler(name, num_blocks, **kwargs)
    assert isinstance(sampler.gamma, int)
    assert math.isclose(sampler.inclusion_probabilities().sum(), sampler.gamma, abs_tol=1e-6)


@pytest.mark.parametrize("name", REGISTERED)
@given(data=st.data(), seed=seeds, before=st.integers(0, 10))
def test_state_dict_round_trip_continues_the_same_sequence(name, data, seed, before):
    num_blocks, kwargs = data.draw(sampler_configs(name))
    sampler = make_sampler(name, num_blocks, **kwargs)
    rng = np.random.default_rng(seed)
    for _ in range(before):
        sampler.sample(rng)
    # A checkpoint holds the generator state and, for stateful samplers, the sampler state,
    # both as JSON.
    checkpoint = json.dumps(
        {
            "rng": rng.bit_generator.state,
            "sampler": sampler.state_dict() if isinstance(sampler, StatefulSampler) else None,
        }
    )
    expected = [sampler.sample(rng) for _ in range(DRAWS_PER_EXAMPLE)]

    restored = make_sampler(name, num_blocks, **kwargs)
    loaded = json.loads(checkpoint)
    if isinstance(restored, StatefulSampler):
        restored.load_state_dict(loaded["sampler"])
    restored_rng = np.random.default_rng()
    restored_rng.bit_generator.state = loaded["rng"]
    assert [restored.sample(restored_rng) for _ in range(DRAWS_PER_EXAMPLE)] == expected


def test_cyclic_sampler_is_stateful_and_the_others_are_not():
    assert isinstance(make_sampler("cyclic", 4, gamma=2), StatefulSampler)
    assert not isinstance(make_sampler("uniform", 4, gamma=2), StatefulSampler)


# ---------------------------------------------------------------------------------------------
# scores -> inclusion probabilities


def reference_cap_and_redistribute(scores: list[float], gamma: int) -> np.ndarray:
    """The textbook loop: scale to gamma, cap at 1, rescale the uncapped blocks, repeat."""
    s = np.asarray(scores, dtype=float)
    capped = np.zeros(s.size, dtype=bool)
    while True:
        pi = np.where(capped, 1.0, 0.0)
        free = ~capped
        pi[free] = s[free] * (gamma - capped.sum()) / s[free].sum()
        if not np.any(pi > 1 + 1e-12):
            return np.minimum(pi, 1.0)
        capped |= pi > 1


@given(case=scores_and_gamma(max_blocks=20))
def test_pi_from_scores_sums_to_gamma(case):
    scores, gamma = case
    pi = inclusion_probabilities_from_scores(scores, gamma)
    assert math.isclose(pi.sum(), gamma, abs_tol=1e-9)


@given(case=scores_and_gamma(max_blocks=20), temperature=st.floats(0.0, 4.0))
def test_pi_from_scores_is_capped_at_one(case, temperature):
    scores, gamma = case
    pi = inclusion_probabilities_from_scores(scores, gamma, temperature=temperature)
    assert np.all(pi <= 1.0) and np.all(pi >= 0.0)


@given(case=scores_and_gamma(max_blocks=20))
def test_pi_from_scores_matches_the_reference_cap_and_redistribute(case):
    scores, gamma = case
    expected = reference_cap_and_redistribute(scores, gamma)
    np.testing.assert_allclose(
        inclusion_probabilities_from_scores(scores, gamma), expected, rtol=1e-9, atol=1e-12
    )


@given(
    case=scores_and_gamma(max_blocks=20),
    scale=st.floats(min_value=1e-6, max_value=1e6),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    floor_share=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_pi_from_scores_is_scale_invariant(case, scale, temperature, floor_share):
    scores, gamma = case
    floor = floor_share * gamma / len(scores)
    pi = inclusion_probabilities_from_scores(scores, gamma, temperature=temperature, floor=floor)
    scaled = inclusion_probabilities_from_scores(
        [s * scale for s in scores], gamma, temperature=temperature, floor=floor
    )
    np.testing.assert_allclose(scaled, pi, rtol=1e-9, atol=1e-12)


@given(
    case=scores_and_gamma(max_blocks=20),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    floor_share=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_pi_from_scores_is_monotonic_in_score(case, temperature, floor_share):
    scores, gamma = case
    floor = floor_share * gamma / len(scores)
    pi = inclusion_probabilities_from_scores(scores, gamma, temperature=temperature, floor=floor)
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(pi[order]) >= 0), "a higher score got a lower pi"


@given(case=scores_and_gamma(max_blocks=20))
def test_zero_scores_get_zero_pi_without_floor(case):
    scores, gamma = case
    pi = inclusion_probabilities_from_scores(scores, gamma)
    assert np.all(pi[np.asarray(scores) == 0] == 0)


@given(case=scores_and_gamma(max_blocks=20), floor_share=st.floats(0.0, 1.0))
def test_floor_is_a_lower_bound_on_pi(case, floor_share):
    scores, gamma = case
    floor = floor_share * gamma / len(scores)
    pi = inclusion_probabilities_from_scores(scores, gamma, floor=floor)
    assert np.all(pi >= floor)
    assert math.isclose(pi.sum(), gamma, abs_tol=1e-9)
    np.testing.assert_array_equal(pi[np.asarray(scores) == 0], floor)


def test_floor_lifts_zero_score_blocks_into_the_draw():
    pi = inclusion_probabilities_from_scores([4.0, 2.0, 0.0, 0.0], gamma=2, floor=0.1)
    np.testing.assert_allclose(pi, [1.0, 0.8, 0.1, 0.1])


def test_floor_equal_to_gamma_over_n_gives_the_uniform_design():
    pi = inclusion_probabilities_from_scores([9.0, 1.0, 0.0, 3.0], gamma=2, floor=0.5)
    np.testing.assert_array_equal(pi, [0.5, 0.5, 0.5, 0.5])


def test_temperature_zero_treats_positive_scores_alike():
    pi = inclusion_probabilities_from_scores([100.0, 1.0, 0.0, 1.0], gamma=2, temperature=0.0)
    np.testing.assert_allclose(pi, [2 / 3, 2 / 3, 0.0, 2 / 3])


def test_tiny_positive_scores_keep_a_positive_pi():
    # (1e-300 / 1e300) ** 3 underflows in plain floats; a positive score must stay drawable.
    pi = inclusion_probabilities_from_scores([1e300, 1e-300, 1e-300], gamma=2, temperature=3.0)
    np.testing.assert_allclose(pi, [1.0, 0.5, 0.5])


def test_gamma_zero_gives_zero_pi():
    np.testing.assert_array_equal(inclusion_probabilities_from_scores([1.0, 2.0], 0), [0, 0])


# ---------------------------------------------------------------------------------------------
# the systematic design


@st.composite
def awkward_probabilities(draw):
    """pi whose float sum is off by rounding: repeated 1/m (1/3 + 1/3 + 1/3 != 1) plus 0s and 1s."""
    m = draw(st.integers(2, 9))
    groups = draw(st.integers(1, 4))
    pi = (
        [1.0 / m] * (m * groups) + [1.0] * draw(st.integers(0, 3)) + [0.0] * draw(st.integers(0, 3))
    )
    return draw(st.permutations(pi))


@given(pi=awkward_probabilities(), seed=seeds)
def test_systematic_sample_draws_exactly_gamma_with_sure_and_impossible_blocks_exact(pi, seed):
    gamma = round(sum(pi))
    rng = np.random.default_rng(seed)
    pi_array = np.asarray(pi)
    for _ in range(DRAWS_PER_EXAMPLE):
        active = systematic_sample(pi, rng)
        assert len(active) == gamma == len(set(active))
        assert set(np.flatnonzero(pi_array == 1).tolist()) <= set(active)
        assert set(np.flatnonzero(pi_array == 0).tolist()).isdisjoint(active)


def test_systematic_sample_accepts_rounded_probabilities_within_the_tolerance():
    pi = [0.333333, 0.333333, 0.333333, 1.0]  # sums to 1.999999: a hand-typed policy
    active = systematic_sample(pi, np.random.default_rng(0))
    assert len(active) == 2 and 3 in active


def test_systematic_sample_of_all_zero_probabilities_is_empty():
    assert systematic_sample([0.0, 0.0], np.random.default_rng(0)) == ()


def test_weighted_sampler_from_scores_equals_the_registry_build():
    direct = WeightedSampler.from_scores([3.0, 1.0, 1.0, 0.0], 2, temperature=2.0)
    built = make_sampler("weighted", 4, scores=[3.0, 1.0, 1.0, 0.0], gamma=2, temperature=2.0)
    assert direct == built
    assert draws(direct, 7) == draws(built, 7)


def test_weighted_sampler_is_immutable():
    sampler = make_sampler("weighted", 3, inclusion_probabilities=[1.0, 0.5, 0.5])
    with pytest.raises(AttributeError):
        sampler.gamma = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# the cyclic design


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("ascending", [(0, 1), (2, 3), (0, 4), (1, 2), (3, 4), (0, 1)]),
        ("descending", [(3, 4), (1, 2), (0, 4), (2, 3), (0, 1), (3, 4)]),
    ],
)
def test_cyclic_sampler_wraps_a_pass_into_the_next(order, expected):
    sampler = make_sampler("cyclic", 5, gamma=2, order=order)
    assert draws(sampler, 0, count=6) == expected


@given(
    num_blocks=st.integers(1, 12),
    data=st.data(),
    order=st.sampled_from(["ascending", "descending", "random"]),
    seed=seeds,
)
def test_cyclic_inclusion_probabilities_are_exact_over_a_full_cycle(num_blocks, data, order, seed):
    gamma = data.draw(st.integers(1, num_blocks))
    sampler = make_sampler("cyclic", num_blocks, gamma=gamma, order=order)
    cycle = math.lcm(num_blocks, gamma) // gamma
    rng = np.random.default_rng(seed)
    for _ in range(2):  # two consecutive cycles, each exact on its own
        counts = Counter(b for _ in range(cycle) for b in sampler.sample(rng))
        frequencies = np.array([counts[b] for b in range(num_blocks)]) / cycle
        np.testing.assert_allclose(frequencies, sampler.inclusion_probabilities(), rtol=1e-12)


@given(num_blocks=st.integers(1, 12), data=st.data(), seed=seeds)
def test_cyclic_random_passes_visit_every_block_once(num_blocks, data, seed):
    gamma = data.draw(st.integers(1, num_blocks))
    sampler = CyclicSampler(num_blocks, gamma, "random")
    rng = np.random.default_rng(seed)
    for _ in range(3 * num_blocks):
        sampler.sample(rng)
        state = sampler.state_dict()
        assert sorted(state["permutation"]) == list(range(num_blocks))


def test_cyclic_load_state_dict_refuses_another_configuration():
    state = CyclicSampler(6, 2, "random").state_dict()
    with pytest.raises(ValueError, match="gamma=2"):
        CyclicSampler(6, 3, "random").load_state_dict(state)
    with pytest.raises(ValueError, match="order='random'"):
        CyclicSampler(6, 2, "ascending").load_state_dict(state)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"permutation": [0, 1, 1, 3]}, "not a permutation"),
        ({"permutation": [0, 1, 2, 3], "position": 5}, "position=5"),
        ({"permutation": [0, 1, 2, 3], "position": "1"}, "position='1'"),
    ],
)
def test_cyclic_load_state_dict_refuses_a_corrupt_state(change, match):
    sampler = CyclicSampler(4, 2)
    with pytest.raises(ValueError, match=match):
        sampler.load_state_dict({**sampler.state_dict(), **change})


# ---------------------------------------------------------------------------------------------
# the registry


class EveryOtherSampler:
    """Even blocks or odd blocks, each with probability one half (for the registry tests)."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        return tuple(range(int(rng.integers(2)), self.num_blocks, 2))

    def inclusion_probabilities(self) -> np.ndarray:
        return np.full(self.num_blocks, 0.5)


def test_register_sampler_adds_a_user_sampler_and_refuses_its_duplicate():
    name = "tests.every-other"
    register_sampler(name, EveryOtherSampler)
    assert name in available_samplers()
    sampler = make_sampler(name, 6)
    assert isinstance(sampler, Sampler) and sampler.num_blocks == 6
    with pytest.raises(ValueError, match=r"'tests\.every-other' is already registered"):
        register_sampler(name, EveryOtherSampler)


@pytest.mark.parametrize("name", ["uniform", "weighted", "fixed", "bernoulli", "cyclic"])
def test_register_sampler_refuses_a_builtin_name(name):
    with pytest.raises(ValueError, match=f"'{name}' is already registered"):
        register_sampler(name, UniformSampler)


@pytest.mark.parametrize(("name", "factory"), [("", UniformSampler), ("tests.bad", 3)])
def test_register_sampler_refuses_a_bad_name_or_factory(name, factory):
    with pytest.raises(ValueError):
        register_sampler(name, factory)


def test_make_sampler_names_the_known_samplers_for_an_unknown_name():
    with pytest.raises(ValueError, match=r"'unifrom'.*uniform, weighted, fixed, bernoulli, cyclic"):
        make_sampler("unifrom", 4, gamma=2)


def test_make_sampler_refuses_a_factory_that_returns_no_sampler():
    register_sampler("tests.not-a-sampler", lambda num_blocks: object())
    with pytest.raises(TypeError, match=r"tests\.not-a-sampler"):
        make_sampler("tests.not-a-sampler", 4)


def test_make_sampler_refuses_a_factory_with_the_wrong_block_count():
    register_sampler("tests.wrong-size", lambda num_blocks: EveryOtherSampler(num_blocks + 1))
    with pytest.raises(TypeError, match="num_blocks=5"):
        make_sampler("tests.wrong-size", 4)


def test_builtin_classes_build_what_make_sampler_builds():
    rng_seed = 3
    pairs = [
        (UniformSampler(6, 2), make_sampler("uniform", 6, gamma=2)),
        (FixedSampler(6, (4, 1)), make_sampler("fixed", 6, blocks=[1, 4])),
        (
            BernoulliSampler(3, (0.5, 1.0, 0.0)),
            make_sampler("bernoulli", 3, probabilities=np.array([0.5, 1.0, 0.0])),
        ),
        (CyclicSampler(6, 4, "random"), make_sampler("cyclic", 6, gamma=4, order="random")),
    ]
    for direct, built in pairs:
        assert draws(direct, rng_seed) == draws(built, rng_seed)


def test_fixed_sampler_with_no_blocks_trains_only_embeddings_and_head():
    sampler = make_sampler("fixed", 5, blocks=())
    assert sampler.gamma == 0
    assert draws(sampler, 0, count=3) == [(), (), ()]


def test_sample_refuses_a_seed_instead_of_a_generator():
    with pytest.raises(TypeError, match="default_rng"):
        make_sampler("uniform", 4, gamma=2).sample(0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# validation: each bad input raises ValueError naming the field and the value

NAN, INF = float("nan"), float("inf")


def bad(name, num_blocks, match, **kwargs):
    """One bad input: make_sampler(name, num_blocks, **kwargs) must raise matching `match`."""
    return pytest.param(name, num_blocks, kwargs, match, id=f"{name}-{match}")


BAD_INPUTS = [
    # num_blocks
    bad("uniform", 0, r"num_blocks=0", gamma=0),
    bad("uniform", -3, r"num_blocks=-3", gamma=0),
    bad("uniform", 2.5, r"num_blocks=2\.5", gamma=1),
    bad("uniform", True, r"num_blocks=True", gamma=1),
    # gamma
    bad("uniform", 4, r"gamma=-1", gamma=-1),
    bad("uniform", 4, r"gamma=5 is larger than the model's 4 blocks", gamma=5),
    bad("uniform", 4, r"gamma=1\.5", gamma=1.5),
    bad("cyclic", 4, r"gamma=-1", gamma=-1),
    bad("cyclic", 4, r"gamma=5", gamma=5),
    bad("weighted", 3, r"gamma=4", scores=[1, 1, 1], gamma=4),
    bad("weighted", 3, r"gamma=-1", scores=[1, 1, 1], gamma=-1),
    # cyclic order
    bad("cyclic", 4, r"order='sideways'", gamma=2, order="sideways"),
    # weighted from inclusion probabilities
    bad(
        "weighted",
        3,
        r"inclusion_probabilities\[1\]=-0\.5",
        inclusion_probabilities=[1.0, -0.5, 0.5],
    ),
    bad(
        "weighted", 3, r"inclusion_probabilities\[1\]=nan", inclusion_probabilities=[1.0, NAN, 0.5]
    ),
    bad(
        "weighted", 3, r"inclusion_probabilities\[1\]=inf", inclusion_probabilities=[1.0, INF, 0.5]
    ),
    bad(
        "weighted",
        3,
        r"inclusion_probabilities has length 2.*num_blocks=3",
        inclusion_probabilities=[1.0, 1.0],
    ),
    bad(
        "weighted",
        3,
        r"inclusion_probabilities has shape \(1, 3\)",
        inclusion_probabilities=[[1.0, 0.5, 0.5]],
    ),
    bad(
        "weighted",
        3,
        r"inclusion_probabilities are all zero",
        inclusion_probabilities=[0.0, 0.0, 0.0],
    ),
    bad(
        "weighted",
        3,
        r"inclusion_probabilities\[0\]=1\.5 is above 1",
        inclusion_probabilities=[1.5, 0.5, 0.0],
    ),
    bad("weighted", 3, r"sum to 1\.5, not a whole number", inclusion_probabilities=[0.5, 0.5, 0.5]),
    bad("weighted", 3, r"gamma=1 disagrees", inclusion_probabilities=[1.0, 0.5, 0.5], gamma=1),
    bad("weighted", 3, r"floor=0\.1", inclusion_probabilities=[1.0, 0.5, 0.5], floor=0.1),
    bad(
        "weighted", 3, r"exactly one of", inclusion_probabilities=[1.0, 0.5, 0.5], scores=[1, 1, 1]
    ),
    bad("weighted", 3, r"exactly one of"),
    bad("weighted", 3, r"inclusion_probabilities='abc'", inclusion_probabilities="abc"),
    # weighted from scores
    bad("weighted", 3, r"needs gamma", scores=[1.0, 2.0, 3.0]),
    bad("weighted", 3, r"scores\[1\]=-2\.0", scores=[1.0, -2.0, 3.0], gamma=1),
    bad("weighted", 3, r"scores\[1\]=nan", scores=[1.0, NAN, 3.0], gamma=1),
    bad("weighted", 3, r"scores\[2\]=-inf", scores=[1.0, 2.0, -INF], gamma=1),
    bad("weighted", 3, r"scores has length 2.*num_blocks=3", scores=[1.0, 2.0], gamma=1),
    bad("weighted", 3, r"scores are all zero", scores=[0.0, 0.0, 0.0], gamma=1),
    bad(
        "weighted",
        3,
        r"only 1 of 3 blocks have a positive score.*gamma=2",
        scores=[1.0, 0.0, 0.0],
        gamma=2,
    ),
    bad("weighted", 4, r"only 1 of 4 blocks", scores=[1.0, 0.0, 0.0, 0.0], gamma=2, floor=0.1),
    bad(
        "weighted", 4, r"floor=0\.3 is infeasible", scores=[1.0, 1.0, 1.0, 1.0], gamma=1, floor=0.3
    ),
    bad("weighted", 3, r"floor=-0\.1", scores=[1.0, 1.0, 1.0], gamma=1, floor=-0.1),
    bad("weighted", 3, r"floor=nan", scores=[1.0, 1.0, 1.0], gamma=1, floor=NAN),
    bad("weighted", 3, r"temperature=-1\.0", scores=[1.0, 1.0, 1.0], gamma=1, temperature=-1.0),
    bad("weighted", 3, r"temperature=inf", scores=[1.0, 1.0, 1.0], gamma=1, temperature=INF),
    bad("weighted", 3, r"temperature='hot'", scores=[1.0, 1.0, 1.0], gamma=1, temperature="hot"),
    # fixed
    bad("fixed", 4, r"blocks contains 4, outside range\(num_blocks=4\)", blocks=(0, 4)),
    bad("fixed", 4, r"blocks contains -1", blocks=(-1,)),
    bad("fixed", 4, r"blocks=\(1, 2, 1\) repeats \[1\]", blocks=(1, 2, 1)),
    bad("fixed", 4, r"blocks=\(1\.5,\)", blocks=(1.5,)),
    bad("fixed", 4, r"blocks=3", blocks=3),
    # bernoulli
    bad("bernoulli", 3, r"probabilities\[1\]=-0\.1", probabilities=[0.5, -0.1, 0.5]),
    bad("bernoulli", 3, r"probabilities\[1\]=nan", probabilities=[0.5, NAN, 0.5]),
    bad("bernoulli", 3, r"probabilities\[1\]=inf", probabilities=[0.5, INF, 0.5]),
    bad("bernoulli", 3, r"probabilities has length 2.*num_blocks=3", probabilities=[0.5, 0.5]),
    bad("bernoulli", 3, r"probabilities are all zero", probabilities=[0.0, 0.0, 0.0]),
    bad("bernoulli", 3, r"probabilities\[1\]=1\.2 is above 1", probabilities=[0.5, 1.2, 0.5]),
]


@pytest.mark.parametrize(("name", "num_blocks", "kwargs", "match"), BAD_INPUTS)
def test_make_sampler_rejects_bad_input_naming_field_and_value(name, num_blocks, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sampler(name, num_blocks, **kwargs)


@pytest.mark.parametrize(
    ("pi", "match"),
    [
        ([0.5, 0.5, 0.5], r"sum to 1\.5, not a whole number"),
        ([1.0, 1.5], r"inclusion_probabilities\[1\]=1\.5 is above 1"),
        ([1.0, NAN], r"inclusion_probabilities\[1\]=nan"),
        ([], r"inclusion_probabilities is empty"),
    ],
)
def test_systematic_sample_rejects_infeasible_probabilities(pi, match):
    with pytest.raises(ValueError, match=match):
        systematic_sample(pi, np.random.default_rng(0))


def test_inclusion_probabilities_from_scores_rejects_a_matrix():
    with pytest.raises(ValueError, match=r"scores has shape \(2, 2\)"):
        inclusion_probabilities_from_scores([[1.0, 2.0], [3.0, 4.0]], 1)
