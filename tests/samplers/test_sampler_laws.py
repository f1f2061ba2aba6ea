"""The laws of BernoulliDepth, GeometricDepth and ScheduledDepth, and their random state."""

from __future__ import annotations

import copy
import io
import itertools
import math
import pickle
import random
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stochdepth import (
    BernoulliDepth,
    DepthSampler,
    GeometricDepth,
    LogNormalPoissonDepth,
    RepeatedBlock,
    ScheduledDepth,
    SeededDepth,
    get_sampler,
)
from stochdepth.samplers._builtin import lognormal_poisson_law

from support.stats import assert_follows, assert_moments
from support.strategies import seeds

N_DRAWS = 20_000

probabilities = st.floats(min_value=0.0, max_value=1.0)
halting = st.floats(min_value=1e-3, max_value=1.0)
small_depths = st.integers(min_value=0, max_value=12)


def draws(sampler: DepthSampler, n: int) -> list[int]:
    return [sampler.sample() for _ in range(n)]


# --- BernoulliDepth: Binomial(max_depth, p) -------------------------------------------


@given(small_depths, probabilities, seeds)
def test_bernoulli_stays_in_bounds(max_depth: int, p: float, seed: int) -> None:
    sampler = BernoulliDepth(max_depth, p, seed=seed)
    assert (sampler.min_depth, sampler.max_depth) == (0, max_depth)
    assert all(0 <= depth <= max_depth and type(depth) is int for depth in draws(sampler, 50))
    assert math.isclose(sum(sampler.probabilities().values()), 1.0)


@pytest.mark.parametrize(("max_depth", "p"), [(1, 0.5), (4, 0.8), (8, 0.25), (12, 0.9), (30, 0.5)])
def test_bernoulli_is_binomial(max_depth: int, p: float) -> None:
    sampler = BernoulliDepth(max_depth, p, seed=max_depth * 1000 + int(p * 100))
    values = draws(sampler, N_DRAWS)
    law = {
        k: math.comb(max_depth, k) * p**k * (1 - p) ** (max_depth - k) for k in range(max_depth + 1)
    }
    assert sampler.probabilities() == pytest.approx(law)
    assert_follows(values, law)
    assert_moments(values, law, mean=max_depth * p, variance=max_depth * p * (1 - p))


@pytest.mark.parametrize(("p", "expected"), [(0.0, 0), (1.0, 7)])
def test_bernoulli_extremes_are_certain(p: float, expected: int) -> None:
    assert set(draws(BernoulliDepth(7, p, seed=0), 200)) == {expected}


def test_the_law_checks_reject_a_wrong_bernoulli() -> None:
    # The checks above could fail: draws with p = 0.55 do not pass for p = 0.5.
    values = draws(BernoulliDepth(8, 0.55, seed=3), N_DRAWS)
    law = BernoulliDepth(8, 0.5, seed=0).probabilities()
    with pytest.raises(AssertionError, match="chi-square"):
        assert_follows(values, law)
    with pytest.raises(AssertionError, match="mean"):
        assert_moments(values, law, mean=4.0, variance=2.0)


# --- GeometricDepth: P(k) ~ p (1 - p)^k, truncated at max_depth -----------------------


def truncated_geometric_moments(p: float, max_depth: int) -> tuple[float, float]:
    """Closed forms of the mean and variance of a geometric law on {0..M}, renormalised."""
    q = 1 - p
    tail = q ** (max_depth + 1)
    mass = 1 - tail
    mean = q / p - (max_depth + 1) * tail / mass
    variance = q / p**2 - (max_depth + 1) ** 2 * tail / mass**2
    return mean, max(variance, 0.0)


@given(halting, small_depths, seeds)
def test_geometric_stays_in_bounds(p: float, max_depth: int, seed: int) -> None:
    sampler = GeometricDepth(p, max_depth, seed=seed)
    assert (sampler.min_depth, sampler.max_depth) == (0, max_depth)
    assert all(0 <= depth <= max_depth and type(depth) is int for depth in draws(sampler, 50))
    law = sampler.probabilities()
    assert math.isclose(sum(law.values()), 1.0)
    assert all(law[k] >= law[k + 1] for k in range(max_depth))  # halting: decreasing


@pytest.mark.parametrize(("p", "max_depth"), [(0.5, 3), (0.3, 6), (0.1, 20), (0.9, 1), (0.05, 200)])
def test_geometric_is_truncated_geometric(p: float, max_depth: int) -> None:
    sampler = GeometricDepth(p, max_depth, seed=max_depth * 1000 + int(p * 100))
    values = draws(sampler, N_DRAWS)
    mass = 1 - (1 - p) ** (max_depth + 1)
    law = {k: p * (1 - p) ** k / mass for k in range(max_depth + 1)}
    assert sampler.probabilities() == pytest.approx(law)
    assert_follows(values, law)
    mean, variance = truncated_geometric_moments(p, max_depth)
    assert_moments(values, law, mean=mean, variance=variance)


def test_geometric_without_a_binding_truncation_has_the_geometric_mean() -> None:
    # max_depth far beyond the tail: the untruncated mean (1 - p) / p, variance (1 - p) / p^2
    p = 0.25
    values = draws(GeometricDepth(p, 10_000, seed=11), N_DRAWS)
    mean = sum(values) / len(values)
    assert abs(mean - (1 - p) / p) < 4.5 * math.sqrt((1 - p) / p**2 / len(values))


def test_geometric_halting_at_once_is_depth_zero() -> None:
    assert set(draws(GeometricDepth(1.0, 9, seed=0), 200)) == {0}


def test_the_law_checks_reject_a_clamped_geometric() -> None:
    # Clamping instead of renormalising piles the tail onto max_depth: rejected.
    rng = random.Random(5)
    p, max_depth = 0.3, 3
    clamped = [
        min(int(math.log(1 - rng.random()) / math.log(1 - p)), max_depth) for _ in range(N_DRAWS)
    ]
    with pytest.raises(AssertionError, match="chi-square"):
        assert_follows(clamped, GeometricDepth(p, max_depth, seed=0).probabilities())


# --- ScheduledDepth: a linear curriculum ----------------------------------------------


@st.composite
def schedules(draw: st.DrawFn) -> ScheduledDepth:
    low = draw(st.integers(0, 4))
    start = draw(st.integers(low, low + 8))
    end = draw(st.integers(low, low + 8))
    steps = draw(st.integers(0, 500))
    return ScheduledDepth(start, end, steps, low=low, seed=draw(seeds))


@given(schedules(), st.lists(st.integers(0, 1000), min_size=2, max_size=20))
def test_the_schedule_is_monotone_from_start_to_end(
    sampler: ScheduledDepth, steps: list[int]
) -> None:
    start, end = sampler.bound_at(0), sampler.bound_at(10**9)
    bounds = [sampler.bound_at(t) for t in sorted(steps)]
    pairs = list(itertools.pairwise(bounds))
    if end >= start:
        assert all(a <= b for a, b in pairs)
    else:
        assert all(a >= b for a, b in pairs)
    assert all(min(start, end) <= b <= max(start, end) for b in bounds)


@pytest.mark.parametrize(
    ("start", "end", "steps", "expected"),
    [
        (1, 5, 100, {0: 1, 24: 1, 25: 2, 50: 3, 75: 4, 99: 4, 100: 5, 10**6: 5}),
        (6, 2, 4, {0: 6, 1: 5, 2: 4, 3: 3, 4: 2, 5: 2}),
        (3, 3, 10, {0: 3, 5: 3, 50: 3}),
        (0, 4, 0, {0: 4, 1: 4}),
    ],
)
def test_the_schedule_is_the_documented_formula(
    start: int, end: int, steps: int, expected: dict[int, int]
) -> None:
    sampler = ScheduledDepth(start, end, steps, seed=0)
    assert {t: sampler.bound_at(t) for t in expected} == expected


@given(schedules(), st.integers(0, 1000))
def test_scheduled_draws_stay_under_the_bound_of_the_step(
    sampler: ScheduledDepth, step: int
) -> None:
    sampler.set_step(step)
    assert sampler.step == step
    bound = sampler.bound_at(step)
    assert all(sampler.min_depth <= depth <= bound for depth in draws(sampler, 30))
    assert sampler.min_depth <= bound <= sampler.max_depth


@pytest.mark.parametrize("step", [0, 30, 60, 200])
def test_scheduled_is_uniform_under_the_bound(step: int) -> None:
    sampler = ScheduledDepth(2, 8, 120, low=1, seed=step)
    sampler.set_step(step)
    bound = sampler.bound_at(step)
    values = draws(sampler, N_DRAWS)
    law = dict.fromkeys(range(1, bound + 1), 1 / (bound - 1 + 1))
    assert sampler.probabilities() == pytest.approx(law)
    assert_follows(values, law)
    n = bound - 1 + 1
    assert_moments(values, law, mean=(1 + bound) / 2, variance=(n * n - 1) / 12)


# --- LogNormalPoissonDepth: 1 + Poisson(rate), rate log-normal with mean `mean` ---------


@given(st.floats(0.05, 40.0), st.floats(0.0, 1.5), st.integers(1, 40), seeds)
def test_lognormal_poisson_stays_in_bounds(
    mean: float, sigma: float, max_depth: int, seed: int
) -> None:
    sampler = LogNormalPoissonDepth(mean, sigma, max_depth=max_depth, seed=seed)
    assert (sampler.min_depth, sampler.max_depth) == (1, max_depth)
    assert all(1 <= depth <= max_depth and type(depth) is int for depth in draws(sampler, 30))
    batch = sampler.sample_batch(30)
    assert batch.dtype == torch.int64
    assert 1 <= int(batch.min()) <= int(batch.max()) <= max_depth
    law = sampler.probabilities()
    assert sorted(law) == list(range(1, max_depth + 1))
    assert math.isclose(sum(law.values()), 1.0)
    assert min(law.values()) >= 0.0


@pytest.mark.parametrize(
    ("mean", "sigma", "max_depth"), [(3, 0.5, 12), (8, 0.5, 20), (1, 1.0, 6), (30, 0.5, 64)]
)
def test_lognormal_poisson_follows_its_probabilities(
    mean: float, sigma: float, max_depth: int
) -> None:
    sampler = LogNormalPoissonDepth(mean, sigma, max_depth=max_depth, seed=17 + max_depth)
    law = sampler.probabilities()
    assert_follows(draws(sampler, N_DRAWS), law)
    assert_follows(sampler.sample_batch(N_DRAWS).tolist(), law)


def test_lognormal_poisson_has_the_documented_mean_and_variance() -> None:
    # max_depth far beyond the tail, so clipping moves no measurable mass: the depth
    # has mean 1 + mean and variance mean + mean^2 (exp(sigma^2) - 1).
    mean, sigma = 4.0, 0.5
    sampler = LogNormalPoissonDepth(mean, sigma, max_depth=120, seed=3)
    values = sampler.sample_batch(N_DRAWS).tolist()
    variance = mean + mean**2 * math.expm1(sigma**2)
    assert_moments(values, sampler.probabilities(), mean=1 + mean, variance=variance)


def test_lognormal_poisson_probabilities_are_accurate() -> None:
    # sigma = 0 is 1 + Poisson(mean), in closed form; otherwise a grid 4 times finer
    # changes no probability by more than 1e-12.
    exact = LogNormalPoissonDepth(2.5, 0.0, max_depth=15, seed=0).probabilities()
    for depth in range(1, 15):
        j = depth - 1
        want = math.exp(-2.5 + j * math.log(2.5) - math.lgamma(j + 1))
        assert math.isclose(exact[depth], want, rel_tol=1e-12, abs_tol=1e-15)
    for mean, sigma, max_depth in [(3, 0.5, 16), (32, 0.5, 128), (1, 2.0, 30)]:
        sampler = LogNormalPoissonDepth(mean, sigma, max_depth=max_depth, seed=0)
        law = sampler.probabilities()
        finer = lognormal_poisson_law(math.log(mean) - sigma**2 / 2, sigma, max_depth, refine=4)
        assert max(abs(law[d] - finer[d]) for d in law) < 1e-12


def test_lognormal_poisson_clips_the_tail_onto_max_depth() -> None:
    sampler = LogNormalPoissonDepth(6, max_depth=4, seed=1)
    law = sampler.probabilities()
    unclipped = LogNormalPoissonDepth(6, max_depth=400, seed=1).probabilities()
    assert math.isclose(law[4], sum(p for d, p in unclipped.items() if d >= 4), rel_tol=1e-9)
    assert sampler.sample_batch(2000).bincount().tolist()[4] > 1500


def test_the_law_checks_reject_poisson_without_the_lognormal_rate() -> None:
    generator = torch.Generator().manual_seed(0)
    plain = 1 + torch.poisson(torch.full((N_DRAWS,), 4.0), generator=generator)
    law = LogNormalPoissonDepth(4, 0.5, max_depth=60, seed=0).probabilities()
    with pytest.raises(AssertionError, match="chi-square"):
        assert_follows(plain.clamp(max=60).to(torch.int64).tolist(), law)


def test_lognormal_poisson_is_registered() -> None:
    sampler = get_sampler("lognormal_poisson:mean=3,max_depth=10,seed=4")
    assert isinstance(sampler, LogNormalPoissonDepth)
    assert (sampler.mean, sampler.sigma, sampler.max_depth, sampler.seed) == (3.0, 0.5, 10, 4)


# --- every generator sampler: seeds, generators and state ------------------------------

FACTORIES: dict[str, Callable[..., DepthSampler]] = {
    "seeded": lambda **kw: SeededDepth(0, 5, **kw),
    "bernoulli": lambda **kw: BernoulliDepth(6, 0.6, **kw),
    "geometric": lambda **kw: GeometricDepth(0.3, 7, **kw),
    "scheduled": lambda **kw: ScheduledDepth(1, 6, 40, **kw),
    "lognormal_poisson": lambda **kw: LogNormalPoissonDepth(3, max_depth=9, **kw),
}
kinds = st.sampled_from(sorted(FACTORIES))


def advance(sampler: DepthSampler, n: int) -> list[int]:
    """Draw ``n`` depths, moving a schedule forward one step per draw."""
    out = []
    for _ in range(n):
        if isinstance(sampler, ScheduledDepth):
            sampler.set_step(sampler.step + 1)
        out.append(sampler.sample())
    return out


@given(kinds, seeds, st.integers(0, 30))
def test_equal_seeds_give_equal_sequences(kind: str, seed: int, n: int) -> None:
    make = FACTORIES[kind]
    assert advance(make(seed=seed), n) == advance(make(seed=seed), n)


@given(kinds, seeds, st.integers(0, 30))
def test_a_generator_is_drawn_from_as_given(kind: str, seed: int, n: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    sampler = FACTORIES[kind](generator=generator)
    assert sampler.generator is generator  # shared, not copied
    assert sampler.seed == seed
    assert advance(sampler, n) == advance(FACTORIES[kind](seed=seed), n)


@pytest.mark.parametrize("kind", sorted(set(FACTORIES) - {"seeded"}))
def test_without_a_seed_the_seed_comes_from_torchs_global_generator(kind: str) -> None:
    torch.manual_seed(123)
    first = FACTORIES[kind]()
    torch.manual_seed(123)
    second = FACTORIES[kind]()
    assert first.seed == second.seed
    assert advance(first, 20) == advance(second, 20)
    assert FACTORIES[kind]().seed != first.seed  # the global generator moved on


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_seed_and_generator_together_are_an_error(kind: str) -> None:
    with pytest.raises(TypeError, match="seed or generator, not both"):
        FACTORIES[kind](seed=1, generator=torch.Generator())


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@pytest.mark.parametrize("generator", [0, "gen", torch.randn(2)])
def test_a_generator_must_be_a_torch_generator(kind: str, generator: object) -> None:
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator, got "):
        FACTORIES[kind](generator=generator)


@given(kinds, seeds, st.integers(0, 20), st.integers(1, 20))
def test_a_state_round_trip_resumes_the_sequence(
    kind: str, seed: int, before: int, after: int
) -> None:
    make = FACTORIES[kind]
    original = make(seed=seed)
    advance(original, before)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = make(seed=(seed + 1) % 2**64)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.seed == original.seed
    assert advance(restored, after) == advance(original, after)


@given(kinds, seeds, st.integers(0, 20), st.integers(1, 20))
def test_pickle_and_deepcopy_resume_the_sequence(
    kind: str, seed: int, before: int, after: int
) -> None:
    original = FACTORIES[kind](seed=seed)
    advance(original, before)
    for copied in (pickle.loads(pickle.dumps(original)), copy.deepcopy(original)):
        assert repr(copied) == repr(original)
        assert copied.state_dict()["seed"] == original.state_dict()["seed"]
        assert advance(copy.deepcopy(copied), after) == advance(copy.deepcopy(original), after)


def test_a_schedule_saves_its_step() -> None:
    sampler = ScheduledDepth(0, 8, 100, seed=0)
    sampler.set_step(77)
    restored = ScheduledDepth(0, 8, 100, seed=1)
    restored.load_state_dict(sampler.state_dict())
    assert restored.step == 77


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_a_block_saves_and_restores_the_samplers_state(kind: str) -> None:
    torch.manual_seed(0)
    block = RepeatedBlock(torch.nn.Linear(3, 3), FACTORIES[kind](seed=5))
    for _ in range(7):
        block(torch.randn(2, 3))
    state = block.state_dict()
    twin = RepeatedBlock(torch.nn.Linear(3, 3), FACTORIES[kind](seed=6))
    twin.load_state_dict(state)
    assert advance(twin.sampler, 15) == advance(block.sampler, 15)


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        ({"seed": 1}, ValueError, r"lacks 'generator_state'"),
        (
            {"seed": 1, "generator_state": [1, 2]},
            TypeError,
            r"generator_state'\] must be a torch.ByteTensor",
        ),
        ({"seed": 1, "generator_state": torch.zeros(3)}, ValueError, r"dtype torch.uint8"),
        (
            {"seed": 1, "generator_state": torch.zeros(3, dtype=torch.uint8)},
            ValueError,
            r"not a CPU generator state",
        ),
        (
            {"seed": -1, "generator_state": torch.Generator().get_state()},
            ValueError,
            r"state\['seed'\]",
        ),
    ],
)
@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_a_bad_state_is_rejected_and_changes_nothing(
    kind: str, state: dict[str, object], error: type[Exception], match: str
) -> None:
    sampler = FACTORIES[kind](seed=9)
    if isinstance(sampler, ScheduledDepth):
        state = {**state, "step": 3}
    before = sampler.state_dict()
    with pytest.raises(error, match=match):
        sampler.load_state_dict(state)
    after = sampler.state_dict()
    assert after["seed"] == before["seed"]
    assert torch.equal(after["generator_state"], before["generator_state"])


def test_a_bad_step_in_the_state_is_rejected_and_changes_nothing() -> None:
    sampler = ScheduledDepth(0, 4, 10, seed=0)
    sampler.set_step(2)
    good = sampler.state_dict()
    other = ScheduledDepth(0, 4, 10, seed=1)
    advance(other, 3)
    with pytest.raises(ValueError, match=r"state\['step'\] must be an int >= 0"):
        sampler.load_state_dict({**other.state_dict(), "step": -4})
    assert sampler.step == 2
    assert torch.equal(sampler.state_dict()["generator_state"], good["generator_state"])
    with pytest.raises(ValueError, match=r"lacks 'step'"):
        sampler.load_state_dict({"seed": 0, "generator_state": good["generator_state"]})


# --- bad arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: BernoulliDepth(-1), ValueError, r"^max_depth must be an int >= 0, got -1"),
        (lambda: BernoulliDepth(2.0), TypeError, r"^max_depth must be an int, got 2.0"),
        (
            lambda: BernoulliDepth(3, 1.5),
            ValueError,
            r"^p must be a probability in \[0, 1\], got 1.5",
        ),
        (
            lambda: BernoulliDepth(3, math.nan),
            ValueError,
            r"^p must be a probability in \[0, 1\], got nan",
        ),
        (
            lambda: BernoulliDepth(3, "0.5"),
            TypeError,
            r"^p must be a probability \(a real number\)",
        ),
        (lambda: BernoulliDepth(3, True), TypeError, r"^p must be a probability"),
        (
            lambda: GeometricDepth(0.0, 3),
            ValueError,
            r"^p must be a probability in \(0, 1\], got 0.0",
        ),
        (lambda: GeometricDepth(-0.1, 3), ValueError, r"^p must be a probability in \(0, 1\]"),
        (lambda: GeometricDepth(0.5, -2), ValueError, r"^max_depth must be an int >= 0, got -2"),
        (lambda: ScheduledDepth(1, 5, -1), ValueError, r"^steps must be an int >= 0, got -1"),
        (lambda: ScheduledDepth(1, 5, 10, low=2), ValueError, r"^start and end must be >= low"),
        (lambda: ScheduledDepth(1.5, 5, 10), TypeError, r"^start must be an int, got 1.5"),
        (lambda: LogNormalPoissonDepth(0, max_depth=4), ValueError, r"^mean must be > 0.0"),
        (lambda: LogNormalPoissonDepth(2, -0.5, max_depth=4), ValueError, r"^sigma must be >= 0"),
        (
            lambda: LogNormalPoissonDepth(2, max_depth=0),
            ValueError,
            r"^max_depth must be an int >= 1",
        ),
        (
            lambda: LogNormalPoissonDepth("2", max_depth=3),
            TypeError,
            r"^mean must be a real number",
        ),
        (
            lambda: ScheduledDepth(1, 5, 10, seed=2**64),
            ValueError,
            r"^seed must be an int in \[0, 2\*\*64 - 1\]",
        ),
    ],
)
def test_bad_arguments_name_themselves(
    make: Callable[[], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("step", [-1, 1.0, None])
def test_set_step_checks_the_step(step: object) -> None:
    sampler = ScheduledDepth(0, 4, 10, seed=0)
    with pytest.raises((TypeError, ValueError), match=r"^step must be an int"):
        sampler.set_step(step)  # type: ignore[arg-type]
    assert sampler.step == 0
