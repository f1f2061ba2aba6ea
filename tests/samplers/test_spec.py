"""Sampler specs, ``NAME`` or ``NAME:key=value,...``: parsing and building."""

from __future__ import annotations

import math
import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stochdepth import FixedDepth, SeededDepth, UniformDepth, UnknownPluginError, get_sampler
from stochdepth.samplers._spec import parse_sampler_spec

from support.strategies import bounds, seeds, spaces, spec_words

NAMES = ("uniform", "fixed", "seeded")

# --- parse_sampler_spec ---------------------------------------------------------------


@pytest.mark.parametrize("name", [*NAMES, "anything_else", "x"])
def test_a_bare_name_has_no_parameters(name: str) -> None:
    assert parse_sampler_spec(name) == (name, {})


def test_name_and_parameters() -> None:
    name, kwargs = parse_sampler_spec("seeded:low=0,high=3,seed=7")
    assert name == "seeded"
    assert kwargs == {"low": 0, "high": 3, "seed": 7}
    assert list(kwargs) == ["low", "high", "seed"]
    assert all(type(value) is int for value in kwargs.values())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("7", 7),
        ("-2", -2),
        ("+5", 5),
        (str(2**64), 2**64),
        ("1.5", 1.5),
        ("1.0", 1.0),
        ("-0.25", -0.25),
        ("1e3", 1000.0),
        ("true", True),
        ("false", False),
        ("True", True),
        ("FALSE", False),
        ("tRuE", True),
        ("abc", "abc"),
        ("yes", "yes"),
        ("1.5.2", "1.5.2"),
        ("0x10", "0x10"),
        ("", ""),
    ],
)
def test_values_become_int_float_bool_or_str(text: str, expected: object) -> None:
    _, kwargs = parse_sampler_spec(f"custom:value={text}")
    value = kwargs["value"]
    assert type(value) is type(expected)
    assert value == expected


@given(st.integers())
def test_any_int_value_parses_as_that_int(number: int) -> None:
    _, kwargs = parse_sampler_spec(f"x:n={number}")
    assert type(kwargs["n"]) is int
    assert kwargs["n"] == number


@given(st.floats(allow_nan=False))
def test_any_float_value_parses_as_that_float(number: float) -> None:
    _, kwargs = parse_sampler_spec(f"x:f={number!r}")
    assert type(kwargs["f"]) is float
    assert kwargs["f"] == number


def test_nan_value_parses_as_a_float_nan() -> None:
    _, kwargs = parse_sampler_spec("x:f=nan")
    assert type(kwargs["f"]) is float
    assert math.isnan(kwargs["f"])


@given(spec_words)
def test_other_words_stay_strings(word: str) -> None:
    _, kwargs = parse_sampler_spec(f"x:w={word}")
    assert kwargs == {"w": word}


@given(st.booleans(), st.data())
def test_bools_in_any_case(value: bool, data: st.DataObject) -> None:
    word = "".join(
        char.upper() if data.draw(st.booleans()) else char for char in str(value).lower()
    )
    _, kwargs = parse_sampler_spec(f"x:b={word}")
    assert kwargs["b"] is value


def test_whitespace_is_tolerated() -> None:
    assert parse_sampler_spec("  seeded : low = 0 ,\thigh=3 , seed= 7  ") == (
        "seeded",
        {"low": 0, "high": 3, "seed": 7},
    )
    assert parse_sampler_spec(" fixed ") == ("fixed", {})
    assert parse_sampler_spec("x:flag = TRUE ") == ("x", {"flag": True})


# --- get_sampler: what it builds ------------------------------------------------


def test_uniform_spec() -> None:
    sampler = get_sampler("uniform:low=0,high=3")
    assert type(sampler) is UniformDepth
    assert (sampler.low, sampler.high) == (0, 3)
    assert repr(sampler) == "UniformDepth(low=0, high=3)"


def test_bare_uniform_spec_is_the_default_range() -> None:
    sampler = get_sampler("uniform")
    assert type(sampler) is UniformDepth
    assert (sampler.min_depth, sampler.max_depth) == (0, 3)


def test_uniform_spec_draws_like_random_randint() -> None:
    sampler = get_sampler("uniform:low=1,high=4")
    random.seed(5)
    expected = [random.randint(1, 4) for _ in range(40)]
    random.seed(5)
    assert [sampler.sample() for _ in range(40)] == expected


def test_fixed_spec() -> None:
    sampler = get_sampler("fixed:depth=2")
    assert type(sampler) is FixedDepth
    assert sampler.depth == 2
    assert [sampler.sample() for _ in range(10)] == [2] * 10


def test_seeded_spec_draws_like_seeded_depth() -> None:
    sampler = get_sampler("seeded:low=0,high=3,seed=7")
    assert type(sampler) is SeededDepth
    assert (sampler.low, sampler.high, sampler.seed) == (0, 3, 7)
    reference = SeededDepth(0, 3, seed=7)
    assert [sampler.sample() for _ in range(64)] == [reference.sample() for _ in range(64)]


def test_seeded_spec_with_only_a_seed_uses_the_default_range() -> None:
    sampler = get_sampler("seeded:seed=3")
    assert repr(sampler) == "SeededDepth(low=0, high=3, seed=3)"


@st.composite
def spec_text(draw: st.DrawFn, name: str, params: dict[str, int]) -> str:
    """``name:key=value,...`` with drawn whitespace, in a drawn order of parameters."""
    keys = draw(st.permutations(list(params)))
    items = [
        f"{draw(spaces)}{key}{draw(spaces)}={draw(spaces)}{params[key]}{draw(spaces)}"
        for key in keys
    ]
    return f"{draw(spaces)}{name}{draw(spaces)}:" + ",".join(items)


@given(bounds(max_value=10**6), seeds, st.data())
def test_spec_round_trip(low_high: tuple[int, int], seed: int, data: st.DataObject) -> None:
    low, high = low_high

    uniform = get_sampler(data.draw(spec_text("uniform", {"low": low, "high": high})))
    assert type(uniform) is UniformDepth
    assert (uniform.min_depth, uniform.max_depth) == (low, high)

    fixed = get_sampler(data.draw(spec_text("fixed", {"depth": high})))
    assert type(fixed) is FixedDepth
    assert (fixed.min_depth, fixed.max_depth, fixed.sample()) == (high, high, high)

    params = {"low": low, "high": high, "seed": seed}
    seeded = get_sampler(data.draw(spec_text("seeded", params)))
    assert type(seeded) is SeededDepth
    assert (seeded.min_depth, seeded.max_depth, seeded.seed) == (low, high, seed)
    reference = SeededDepth(low, high, seed=seed)
    assert [seeded.sample() for _ in range(8)] == [reference.sample() for _ in range(8)]


# --- get_sampler: errors --------------------------------------------------------


@pytest.mark.parametrize("spec", ["nope", "Uniform", "nope:low=1", "random:depth=2"])
def test_unknown_name_lists_the_samplers(spec: str) -> None:
    name = spec.partition(":")[0]
    with pytest.raises(UnknownPluginError) as info:
        get_sampler(spec)
    message = str(info.value)
    assert repr(name) in message
    for known in NAMES:
        assert re.search(rf"\b{known}\b", message), message


def test_unknown_sampler_error_is_a_lookup_error() -> None:
    assert issubclass(UnknownPluginError, LookupError)
    with pytest.raises(LookupError, match="samplers are"):
        get_sampler("nope")


@pytest.mark.parametrize(
    ("spec", "sampler", "parameter", "accepted"),
    [
        ("fixed:dept=2", "fixed", "dept", ["depth"]),
        ("uniform:lo=1", "uniform", "lo", ["low", "high"]),
        ("uniform:low=0,high=3,seed=1", "uniform", "seed", ["low", "high"]),
        ("seeded:seed=1,sed=2", "seeded", "sed", ["low", "high", "seed"]),
    ],
)
def test_unknown_parameter(spec: str, sampler: str, parameter: str, accepted: list[str]) -> None:
    with pytest.raises(TypeError) as info:
        get_sampler(spec)
    message = str(info.value)
    assert repr(sampler) in message
    assert repr(parameter) in message
    for name in accepted:
        assert re.search(rf"\b{name}\b", message), message


@pytest.mark.parametrize(
    ("spec", "name", "required"),
    [
        ("seeded", "seeded", "seed"),
        ("seeded:low=0,high=3", "seeded", "seed"),
        ("fixed", "fixed", "depth"),
    ],
)
def test_missing_required_parameter(spec: str, name: str, required: str) -> None:
    with pytest.raises(TypeError, match=rf"^sampler {name!r}(: \w+)? needs parameter {required!r}"):
        get_sampler(spec)


@pytest.mark.parametrize(
    ("spec", "error", "detail"),
    [
        ("fixed:depth=-1", ValueError, r"depth must be an int >= 0, got -1"),
        ("uniform:low=3,high=1", ValueError, r"high must be >= low.*low=3.*high=1"),
        ("uniform:low=-1", ValueError, r"low must be an int >= 0, got -1"),
        ("fixed:depth=1.5", TypeError, r"depth must be an int, got 1\.5"),
        ("fixed:depth=true", TypeError, r"depth must be an int, got True"),
        ("uniform:high=abc", TypeError, r"high must be an int, got 'abc'"),
        ("seeded:seed=-1", ValueError, r"seed must be .*-1"),
        ("seeded:seed=7.0", TypeError, r"seed must be an int, got 7\.0"),
        (f"seeded:seed={2**64}", ValueError, rf"seed must be .*{2**64}"),
    ],
)
def test_bad_values_name_the_sampler_first(spec: str, error: type[Exception], detail: str) -> None:
    name = spec.partition(":")[0]
    with pytest.raises(error, match=rf"^sampler {name!r}: {detail}"):
        get_sampler(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        ":x=1",
        "uniform:low",
        "uniform:low=1,low=2",
        "uniform:=1",
        "uniform:",
        "uniform:low=1,",
        "uniform:,low=1",
        "uniform:1low=2",
        "uniform:low high=2",
    ],
)
def test_malformed_specs(spec: str) -> None:
    for function in (parse_sampler_spec, get_sampler):
        with pytest.raises(ValueError, match=re.escape(repr(spec))):
            function(spec)


def test_duplicate_parameter_is_named() -> None:
    with pytest.raises(ValueError, match=r"'low' is given twice"):
        parse_sampler_spec("uniform:low=1, low = 2")


@pytest.mark.parametrize("spec", [None, 3, b"uniform", ["uniform"]])
def test_a_spec_must_be_a_string(spec: object) -> None:
    for function in (parse_sampler_spec, get_sampler):
        with pytest.raises(TypeError, match=rf"must be a string, got {re.escape(repr(spec))}"):
            function(spec)  # type: ignore[arg-type]
