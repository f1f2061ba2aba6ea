"""Laws of the built-in depth samplers and of the sampler protocol check."""

from __future__ import annotations

import ast
import copy
import io
import math
import pickle
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import stochdepth
from stochdepth import (
    BernoulliDepth,
    DepthSampler,
    FixedDepth,
    GeometricDepth,
    ScheduledDepth,
    SeededDepth,
    UniformDepth,
)
from stochdepth._validation import MAX_SAMPLER_DEPTH
from stochdepth.samplers._protocol import check_sampler

from support.processes import run_python
from support.stats import chi2_sf
from support.strategies import bounds, depths, non_ints, samplers, seeds, wide_samplers

draw_counts = st.integers(min_value=1, max_value=40)


def draws(sampler: DepthSampler, n: int) -> list[int]:
    return [sampler.sample() for _ in range(n)]


# --- bounds and types ---------------------------------------------------------------


@given(st.one_of(samplers(), wide_samplers()), draw_counts)
def test_every_draw_is_a_python_int_within_the_bounds(sampler: DepthSampler, n: int) -> None:
    for depth in draws(sampler, n):
        assert type(depth) is int
        assert sampler.min_depth <= depth <= sampler.max_depth
    assert type(sampler.min_depth) is int
    assert type(sampler.max_depth) is int


class _MyInt(int):
    """An integral type that is not ``int`` itself: samplers must still hand out ints."""


@pytest.mark.parametrize(
    "make",
    [
        lambda: UniformDepth(_MyInt(1), _MyInt(3)),
        lambda: FixedDepth(_MyInt(2)),
        lambda: SeededDepth(_MyInt(1), _MyInt(3), seed=_MyInt(5)),
    ],
    ids=["uniform", "fixed", "seeded"],
)
def test_int_subclasses_are_accepted_and_converted_to_int(
    make: Callable[[], DepthSampler],
) -> None:
    sampler = make()
    assert type(sampler.min_depth) is int
    assert type(sampler.max_depth) is int
    assert all(type(depth) is int for depth in draws(sampler, 20))
    if isinstance(sampler, SeededDepth):
        assert type(sampler.seed) is int
        assert type(sampler.state_dict()["seed"]) is int


@given(bounds(max_value=10**6))
def test_uniform_and_seeded_expose_their_bounds(low_high: tuple[int, int]) -> None:
    low, high = low_high
    for sampler in (UniformDepth(low, high), SeededDepth(low, high, seed=0)):
        assert (sampler.low, sampler.high) == (low, high)
        assert (sampler.min_depth, sampler.max_depth) == (low, high)


def test_default_bounds_are_the_articles_zero_to_three() -> None:
    for sampler in (UniformDepth(), SeededDepth(seed=1)):
        assert (sampler.min_depth, sampler.max_depth) == (0, 3)


# --- UniformDepth ---------------------------------------------------------------------


@given(st.integers(), bounds(max_value=10**9), draw_counts)
def test_uniform_is_random_randint_draw_for_draw(
    seed: int, low_high: tuple[int, int], n: int
) -> None:
    low, high = low_high
    random.seed(seed)
    expected = [random.randint(low, high) for _ in range(n)]
    random.seed(seed)
    sampler = UniformDepth(low, high)
    assert draws(sampler, n) == expected
    # ...and it consumed exactly what randint consumes: the next global draw agrees too.
    random.seed(seed)
    for _ in range(n):
        random.randint(low, high)
    after_reference = random.random()
    random.seed(seed)
    draws(sampler, n)
    assert random.random() == after_reference


@given(bounds(), draw_counts)
def test_uniform_leaves_the_torch_rng_alone(low_high: tuple[int, int], n: int) -> None:
    before = torch.get_rng_state()
    draws(UniformDepth(*low_high), n)
    assert torch.equal(torch.get_rng_state(), before)


# --- uniformity: a fixed-seed chi-square test -----------------------------------------


# Textbook chi-square critical values: P(X >= x) for X ~ chi2(df) equals p.
@pytest.mark.parametrize(
    ("x", "df", "p"),
    [
        (3.841459, 1, 0.05),
        (5.991465, 2, 0.05),
        (7.814728, 3, 0.05),
        (13.276704, 4, 0.01),
        (24.321886, 7, 0.001),
        (18.307038, 10, 0.05),
    ],
)
def test_chi2_sf_matches_the_tables(x: float, df: int, p: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(p, rel=1e-4)


def chi2_statistic(values: Sequence[int], low: int, high: int) -> float:
    """Pearson's statistic of ``values`` against the uniform law on ``[low, high]``."""
    counts = Counter(values)
    assert set(counts) <= set(range(low, high + 1)), f"values outside [{low}, {high}]"
    expected = len(values) / (high - low + 1)
    return sum((counts[v] - expected) ** 2 / expected for v in range(low, high + 1))


# Significance: reject uniformity when P(chi2(k - 1) >= statistic) < 1e-3. The draws come
# from fixed seeds, so each case is deterministic: it passes or fails the same way every
# run and cannot flake. Against a correct sampler a given fixed seed is "unlucky" with
# probability 1e-3 (and would then fail at once, for ever, and be looked at); against a
# broken one 1000 draws per value make the statistic huge (see the power check below),
# so a small alpha costs nothing. The p-value is computed exactly with chi2_sf above,
# itself checked against the textbook tables.
ALPHA = 1e-3
DRAWS_PER_VALUE = 1000
RANGES = [(0, 1), (0, 3), (2, 7), (0, 9), (10, 12)]


def assert_uniform(values: Sequence[int], low: int, high: int) -> None:
    statistic = chi2_statistic(values, low, high)
    p_value = chi2_sf(statistic, high - low)
    assert p_value >= ALPHA, (
        f"chi-square {statistic:.2f} with {high - low} degrees of freedom: p = {p_value:.2g}"
    )


@pytest.mark.parametrize(("low", "high"), RANGES)
def test_uniform_is_uniform(low: int, high: int) -> None:
    random.seed(20240611 + low * 100 + high)
    values = draws(UniformDepth(low, high), DRAWS_PER_VALUE * (high - low + 1))
    assert_uniform(values, low, high)


@pytest.mark.parametrize(("low", "high"), RANGES)
def test_seeded_is_uniform(low: int, high: int) -> None:
    sampler = SeededDepth(low, high, seed=1234 + low * 100 + high)
    values = draws(sampler, DRAWS_PER_VALUE * (high - low + 1))
    assert_uniform(values, low, high)


def test_the_uniformity_check_rejects_biased_samplers() -> None:
    # The test above could fail: sequences a few percent off uniform are rejected.
    rng = random.Random(99)
    low, high = 0, 3
    n = DRAWS_PER_VALUE * 4
    never_high = [rng.randint(low, high - 1) for _ in range(n)]
    weights = [1.3, 1.0, 1.0, 1.0]  # low drawn 30% more often than each other value
    skewed = rng.choices(range(low, high + 1), weights=weights, k=n)
    for values in (never_high, skewed):
        with pytest.raises(AssertionError, match="chi-square"):
            assert_uniform(values, low, high)


# --- SeededDepth ----------------------------------------------------------------------


@given(bounds(), seeds, draw_counts)
def test_seeded_equal_seeds_give_equal_sequences(
    low_high: tuple[int, int], seed: int, n: int
) -> None:
    low, high = low_high
    assert draws(SeededDepth(low, high, seed=seed), n) == draws(
        SeededDepth(low, high, seed=seed), n
    )


@given(bounds(), seeds, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), draw_counts)
def test_seeded_ignores_the_global_rngs(
    low_high: tuple[int, int], seed: int, global_a: int, global_b: int, n: int
) -> None:
    low, high = low_high
    random.seed(global_a)
    torch.manual_seed(global_a)
    first = SeededDepth(low, high, seed=seed)
    expected = draws(first, n)

    random.seed(global_b)
    torch.manual_seed(global_b)
    second = SeededDepth(low, high, seed=seed)
    got = []
    for _ in range(n):
        random.random()  # draws from both global RNGs in between
        torch.rand(3)
        torch.randint(0, 10, (2,))
        got.append(second.sample())
    assert got == expected


@given(bounds(), seeds, draw_counts)
def test_seeded_leaves_the_global_rngs_alone(low_high: tuple[int, int], seed: int, n: int) -> None:
    torch_before = torch.get_rng_state()
    random_before = random.getstate()
    draws(SeededDepth(*low_high, seed=seed), n)
    assert torch.equal(torch.get_rng_state(), torch_before)
    assert random.getstate() == random_before


@pytest.mark.parametrize(
    ("seed_a", "seed_b"),
    [(0, 1), (7, 8), (1, 2**32), (123456789, 2**63), (0, 2**64 - 1)],
)
@pytest.mark.parametrize(("low", "high"), [(0, 3), (1, 5)])
def test_seeded_different_seeds_give_different_sequences(
    seed_a: int, seed_b: int, low: int, high: int
) -> None:
    assert draws(SeededDepth(low, high, seed=seed_a), 64) != draws(
        SeededDepth(low, high, seed=seed_b), 64
    )


@given(bounds(), seeds, seeds, st.integers(0, 20), draw_counts)
def test_seeded_state_dict_round_trip_resumes_the_sequence(
    low_high: tuple[int, int], seed: int, other_seed: int, before: int, after: int
) -> None:
    low, high = low_high
    source = SeededDepth(low, high, seed=seed)
    draws(source, before)
    state = source.state_dict()
    expected = draws(source, after)  # drawing on must not change the saved state

    target = SeededDepth(low, high, seed=other_seed)
    draws(target, 3)
    target.load_state_dict(state)
    assert target.seed == seed
    assert repr(target) == repr(source)
    assert draws(target, after) == expected

    source.load_state_dict(state)  # rewinding the sampler itself
    assert draws(source, after) == expected


@given(bounds(), seeds, st.integers(0, 20), draw_counts)
def test_seeded_state_is_ints_and_tensors_and_loads_weights_only(
    low_high: tuple[int, int], seed: int, before: int, after: int
) -> None:
    sampler = SeededDepth(*low_high, seed=seed)
    draws(sampler, before)
    state = sampler.state_dict()
    assert set(state) == {"seed", "generator_state"}
    assert type(state["seed"]) is int
    assert state["seed"] == seed
    assert isinstance(state["generator_state"], torch.Tensor)
    assert state["generator_state"].dtype == torch.uint8

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    expected = draws(sampler, after)
    restored = SeededDepth(*low_high, seed=0)
    restored.load_state_dict(loaded)
    assert restored.seed == seed
    assert draws(restored, after) == expected


@given(bounds(), seeds, st.integers(0, 20), draw_counts)
def test_seeded_pickle_and_deepcopy_continue_independently(
    low_high: tuple[int, int], seed: int, before: int, after: int
) -> None:
    original = SeededDepth(*low_high, seed=seed)
    draws(original, before)
    pickled = pickle.loads(pickle.dumps(original))
    deep = copy.deepcopy(original)
    for clone in (pickled, deep):
        assert type(clone) is SeededDepth
        assert repr(clone) == repr(original)
        assert clone.seed == seed
    expected = draws(original, after)
    # Drawing from the original did not advance the copies, nor they each other.
    assert draws(pickled, after) == expected
    assert draws(deep, after) == expected
    assert draws(original, after) == draws(pickled, after) == draws(deep, after)


@pytest.mark.parametrize("sampler", [UniformDepth(1, 4), FixedDepth(3)], ids=["uniform", "fixed"])
def test_stateless_samplers_pickle_and_copy(sampler: DepthSampler) -> None:
    for clone in (pickle.loads(pickle.dumps(sampler)), copy.deepcopy(sampler)):
        assert type(clone) is type(sampler)
        assert repr(clone) == repr(sampler)


def test_seeded_sequence_is_the_same_in_another_process() -> None:
    low, high, seed, n = 0, 5, 2**40 + 3, 24
    code = (
        "import random, torch\n"
        "random.seed(1); torch.manual_seed(1)\n"
        "from stochdepth import SeededDepth\n"
        f"s = SeededDepth({low}, {high}, seed={seed})\n"
        f"print([s.sample() for _ in range({n})])\n"
    )
    result = run_python("-c", code)
    assert result.stderr == ""
    torch.manual_seed(2)
    random.seed(2)
    assert ast.literal_eval(result.stdout) == draws(SeededDepth(low, high, seed=seed), n)


# --- FixedDepth -----------------------------------------------------------------------


@given(st.one_of(depths, st.integers(min_value=0, max_value=MAX_SAMPLER_DEPTH)), draw_counts)
def test_fixed_always_returns_its_depth(depth: int, n: int) -> None:
    sampler = FixedDepth(depth)
    assert sampler.depth == sampler.min_depth == sampler.max_depth == depth
    assert draws(sampler, n) == [depth] * n


# --- protocol, repr -------------------------------------------------------------------


@given(st.one_of(samplers(), wide_samplers()))
def test_builtins_are_depth_samplers(sampler: DepthSampler) -> None:
    assert isinstance(sampler, stochdepth.DepthSampler)
    assert check_sampler(sampler) is sampler


@pytest.mark.parametrize(
    ("sampler", "text"),
    [
        (UniformDepth(0, 3), "UniformDepth(low=0, high=3)"),
        (UniformDepth(), "UniformDepth(low=0, high=3)"),
        (FixedDepth(2), "FixedDepth(depth=2)"),
        (SeededDepth(0, 3, seed=7), "SeededDepth(low=0, high=3, seed=7)"),
        (SeededDepth(seed=7), "SeededDepth(low=0, high=3, seed=7)"),
    ],
)
def test_repr(sampler: DepthSampler, text: str) -> None:
    assert repr(sampler) == text


@given(st.one_of(samplers(), wide_samplers()), st.integers(), draw_counts)
def test_repr_evals_back_to_an_equivalent_sampler(
    sampler: DepthSampler, global_seed: int, n: int
) -> None:
    rebuilt = eval(repr(sampler), vars(stochdepth))
    assert type(rebuilt) is type(sampler)
    assert repr(rebuilt) == repr(sampler)
    assert (rebuilt.min_depth, rebuilt.max_depth) == (sampler.min_depth, sampler.max_depth)
    # Neither has drawn yet, so both produce the same depths (after the same random.seed,
    # for UniformDepth).
    random.seed(global_seed)
    expected = draws(sampler, n)
    random.seed(global_seed)
    assert draws(rebuilt, n) == expected


# --- bad input ------------------------------------------------------------------------


def shows(value: object) -> str:
    """A regex matching ``repr(value)``."""
    return re.escape(repr(value))


@pytest.mark.parametrize(
    ("make", "error", "pattern"),
    [
        (lambda: UniformDepth(-1, 3), ValueError, r"\blow must be an int >= 0, got -1\b"),
        (lambda: UniformDepth(0, -2), ValueError, r"\bhigh must be an int >= 0, got -2\b"),
        (lambda: SeededDepth(-4, 3, seed=0), ValueError, r"\blow must be .*-4\b"),
        (lambda: UniformDepth(3, 1), ValueError, r"\bhigh\b.*\blow\b.*low=3.*high=1"),
        (lambda: SeededDepth(5, 2, seed=0), ValueError, r"\bhigh\b.*\blow\b.*low=5.*high=2"),
        (lambda: UniformDepth(1.5, 3), TypeError, r"\blow must be an int, got 1\.5\b"),
        (lambda: UniformDepth(0, "2"), TypeError, r"\bhigh must be an int, got '2'"),
        (lambda: UniformDepth(True, 3), TypeError, r"\blow must be an int, got True\b"),
        (lambda: UniformDepth(0, None), TypeError, r"\bhigh must be an int, got None\b"),
        (lambda: SeededDepth(0, 3.0, seed=1), TypeError, r"\bhigh must be an int, got 3\.0"),
        (lambda: FixedDepth(-1), ValueError, r"\bdepth must be an int >= 0, got -1\b"),
        (lambda: FixedDepth(2.0), TypeError, r"\bdepth must be an int, got 2\.0\b"),
        (lambda: FixedDepth(False), TypeError, r"\bdepth must be an int, got False\b"),
        (lambda: SeededDepth(0, 3), TypeError, r"\bseed\b"),
        (lambda: SeededDepth(0, 3, seed=-1), ValueError, r"\bseed must be .*, got -1\b"),
        (
            lambda: SeededDepth(0, 3, seed=2**64),
            ValueError,
            rf"\bseed must be an int in \[0, 2\*\*64 - 1\], got {2**64}\b",
        ),
        (lambda: SeededDepth(0, 3, seed=7.0), TypeError, r"\bseed must be an int, got 7\.0\b"),
        (lambda: SeededDepth(0, 3, seed="7"), TypeError, r"\bseed must be an int, got '7'"),
    ],
)
def test_bad_arguments_are_rejected_with_their_name_and_value(
    make: Callable[[], object], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        make()


@given(bounds(max_value=10**6).filter(lambda b: b[0] < b[1]))
def test_any_reversed_bounds_are_a_value_error(low_high: tuple[int, int]) -> None:
    high, low = low_high  # low > high, by as little as 1
    pattern = rf"\bhigh must be >= low, got low={low} and high={high}$"
    with pytest.raises(ValueError, match=pattern):
        UniformDepth(low, high)
    with pytest.raises(ValueError, match=pattern):
        SeededDepth(low, high, seed=0)


@given(bounds(max_value=10**6))
def test_any_non_negative_ordered_bounds_are_accepted(low_high: tuple[int, int]) -> None:
    low, high = low_high
    assert UniformDepth(low, high).max_depth == high
    assert SeededDepth(low, high, seed=0).max_depth == high
    assert FixedDepth(low).depth == low


def test_largest_seed_is_accepted() -> None:
    sampler = SeededDepth(0, 3, seed=2**64 - 1)
    assert sampler.seed == 2**64 - 1
    assert draws(sampler, 8) == draws(SeededDepth(0, 3, seed=2**64 - 1), 8)


@given(non_ints, st.sampled_from(["low", "high"]))
def test_any_non_int_bound_is_a_type_error(value: object, which: str) -> None:
    kwargs = {"low": 0, "high": 3, which: value}
    for make in (UniformDepth, lambda **kw: SeededDepth(**kw, seed=0)):
        with pytest.raises(TypeError, match=rf"\b{which} must be an int, got {shows(value)}"):
            make(**kwargs)


@given(non_ints)
def test_any_non_int_depth_or_seed_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=rf"\bdepth must be an int, got {shows(value)}"):
        FixedDepth(value)  # type: ignore[arg-type]
    seed_error = (
        "needs parameter 'seed'" if value is None else f"seed must be an int, got {shows(value)}"
    )
    with pytest.raises(TypeError, match=rf"\b{seed_error}"):
        SeededDepth(0, 3, seed=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "error", "pattern"),
    [
        ([1, 2], TypeError, r"\bstate must be a mapping, got \[1, 2\]"),
        (None, TypeError, r"\bstate must be a mapping, got None\b"),
        ({}, ValueError, r"lacks 'generator_state', 'seed'"),
        ({"seed": 1}, ValueError, r"lacks 'generator_state'.*\['seed'\]"),
        ({"generator_state": torch.zeros(3)}, ValueError, r"lacks 'seed'"),
        (
            {"seed": 1, "generator_state": torch.zeros(3, dtype=torch.uint8)},
            ValueError,
            r"state\['generator_state'\]",
        ),
        (
            {
                "seed": 1,
                "generator_state": SeededDepth(seed=1).state_dict()["generator_state"].float(),
            },
            ValueError,
            r"state\['generator_state'\] must be a torch\.ByteTensor .*dtype torch\.float32",
        ),
        (
            {"seed": 1, "generator_state": [0, 1, 2]},
            TypeError,
            r"state\['generator_state'\] must be .*, got \[0, 1, 2\]",
        ),
        (
            {"seed": -1, "generator_state": torch.zeros(3, dtype=torch.uint8)},
            ValueError,
            r"state\['seed'\] must be .*-1\b",
        ),
        (
            {"seed": 1.5, "generator_state": torch.zeros(3, dtype=torch.uint8)},
            TypeError,
            r"state\['seed'\] must be an int, got 1\.5\b",
        ),
    ],
    ids=[
        "list",
        "none",
        "empty",
        "no-generator-state",
        "no-seed",
        "short-generator-state",
        "float-generator-state",
        "generator-state-not-a-tensor",
        "negative-seed",
        "float-seed",
    ],
)
def test_load_state_dict_rejects_bad_states_and_keeps_its_own(
    state: object, error: type[Exception], pattern: str
) -> None:
    sampler = SeededDepth(0, 9, seed=11)
    twin = SeededDepth(0, 9, seed=11)
    draws(sampler, 5)
    draws(twin, 5)
    with pytest.raises(error, match=pattern):
        sampler.load_state_dict(state)  # type: ignore[arg-type]
    # A rejected state changes nothing: same seed, same sequence as before.
    assert sampler.seed == 11
    assert draws(sampler, 32) == draws(twin, 32)


# --- check_sampler --------------------------------------------------------------------


class _NoSample:
    min_depth = 0
    max_depth = 3


class _OnlySample:
    def sample(self) -> int:
        return 0


class _NotCallable:
    min_depth = 0
    max_depth = 3
    sample = 2


class _Bounds:
    def __init__(self, low: object, high: object) -> None:
        self.min_depth = low
        self.max_depth = high

    def sample(self) -> int:
        return 0


@pytest.mark.parametrize("cls", [UniformDepth, FixedDepth, SeededDepth, _Bounds])
def test_check_sampler_rejects_a_class_and_suggests_the_call(cls: type) -> None:
    name = cls.__name__
    with pytest.raises(TypeError, match=rf"class {name}\b.*\b{name}\(\.\.\.\)"):
        check_sampler(cls)


@pytest.mark.parametrize(
    ("sampler", "pattern"),
    [
        (_NoSample(), r"lacks sample$"),
        (_OnlySample(), r"lacks min_depth, max_depth$"),
        (object(), r"lacks min_depth, max_depth, sample$"),
        (3, r"got 3 of type int; it lacks min_depth, max_depth, sample$"),
        (_NotCallable(), r"sample is not callable"),
    ],
    ids=["no-sample", "no-bounds", "object", "int", "sample-not-callable"],
)
def test_check_sampler_lists_what_is_missing(sampler: object, pattern: str) -> None:
    with pytest.raises(TypeError, match=r"^sampler must satisfy the DepthSampler protocol"):
        check_sampler(sampler)
    with pytest.raises(TypeError, match=pattern):
        check_sampler(sampler)


@pytest.mark.parametrize(
    ("low", "high", "error", "pattern"),
    [
        (1.0, 3, TypeError, r"\bsampler\.min_depth must be an int, got 1\.0\b"),
        (0, "3", TypeError, r"\bsampler\.max_depth must be an int, got '3'"),
        (0, True, TypeError, r"\bsampler\.max_depth must be an int, got True\b"),
        (-1, 3, ValueError, r"\bsampler\.min_depth must be an int >= 0, got -1\b"),
        (
            3,
            1,
            ValueError,
            r"\bsampler\.max_depth must be >= sampler\.min_depth, got min_depth=3 and "
            r"max_depth=1\b",
        ),
    ],
)
def test_check_sampler_checks_the_bounds(
    low: object, high: object, error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        check_sampler(_Bounds(low, high))


def test_check_sampler_uses_the_given_name() -> None:
    with pytest.raises(ValueError, match=r"\bmy_sampler\.max_depth must be >= my_sampler"):
        check_sampler(_Bounds(2, 1), name="my_sampler")
    with pytest.raises(TypeError, match=r"^my_sampler must satisfy"):
        check_sampler(_NoSample(), name="my_sampler")


def test_check_sampler_accepts_a_duck_typed_sampler() -> None:
    duck = _Bounds(1, 4)
    assert isinstance(duck, stochdepth.DepthSampler)
    assert check_sampler(duck) is duck


@given(st.integers(min_value=MAX_SAMPLER_DEPTH + 1, max_value=2**70))
def test_fixed_refuses_a_depth_above_the_bound(depth: int) -> None:
    with pytest.raises(ValueError, match=r"depth must be an int in \[0, 2\*\*53\]"):
        FixedDepth(depth)


# --------------------------------------------------------------------------- batched draws


def all_samplers(seed: int) -> list[DepthSampler]:
    return [
        UniformDepth(1, 4),
        FixedDepth(3),
        SeededDepth(0, 5, seed=seed),
        BernoulliDepth(6, p=0.3, seed=seed),
        GeometricDepth(0.4, max_depth=5, seed=seed),
        ScheduledDepth(start=1, end=5, steps=10, seed=seed),
    ]


@given(seed=seeds, n=st.integers(min_value=0, max_value=50))
def test_batched_draws_are_int64_vectors_within_bounds(seed: int, n: int) -> None:
    for sampler in all_samplers(seed):
        drawn = sampler.sample_batch(n)  # type: ignore[attr-defined]
        assert drawn.dtype == torch.int64, sampler
        assert drawn.shape == (n,), sampler
        assert drawn.device.type == "cpu", sampler
        if n:
            assert sampler.min_depth <= int(drawn.min()) <= int(drawn.max()) <= sampler.max_depth


def test_batched_draws_follow_each_samplers_law() -> None:
    random.seed(7)  # UniformDepth draws from Python's random: the test stays deterministic
    n = 40_000
    for sampler in all_samplers(7):
        law = sampler.probabilities()  # type: ignore[attr-defined]
        counts = torch.bincount(sampler.sample_batch(n), minlength=sampler.max_depth + 1)  # type: ignore[attr-defined]
        for depth, p in law.items():
            sigma = math.sqrt(n * p * (1 - p)) + 1e-9
            assert abs(int(counts[depth]) - n * p) < 6 * sigma, (sampler, depth)


def test_batched_draws_are_reproducible() -> None:
    random.seed(3)
    first = UniformDepth(0, 9).sample_batch(20)
    random.seed(3)
    assert torch.equal(UniformDepth(0, 9).sample_batch(20), first)
    assert torch.equal(
        SeededDepth(0, 9, seed=5).sample_batch(20), SeededDepth(0, 9, seed=5).sample_batch(20)
    )
