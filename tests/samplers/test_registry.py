"""The sampler registry: register_sampler, get_sampler, available_samplers and plugins."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

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
    LogNormalPoissonDepth,
    PluginError,
    PluginWarning,
    ScheduledDepth,
    SeededDepth,
    UniformDepth,
    UnknownPluginError,
    available_samplers,
    get_sampler,
    refresh_samplers,
    register_sampler,
    unregister_sampler,
)
from stochdepth.samplers import _registry

from support.processes import run_python

BUILTINS = {
    "uniform": UniformDepth,
    "fixed": FixedDepth,
    "seeded": SeededDepth,
    "bernoulli": BernoulliDepth,
    "geometric": GeometricDepth,
    "scheduled": ScheduledDepth,
    "lognormal_poisson": LogNormalPoissonDepth,
}


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    """Leave the registry as it was: registrations undone, plugins forgotten."""
    registered = _registry.SAMPLERS.snapshot()
    refresh_samplers()
    yield
    _registry.SAMPLERS.restore(registered)
    refresh_samplers()


class TwoDepth:
    """Always depth 2: a minimal sampler for registration tests."""

    min_depth = max_depth = 2

    def sample(self) -> int:
        return 2


# --- built-ins ------------------------------------------------------------------------


def test_the_builtins_are_available_and_sorted() -> None:
    names = available_samplers()
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)


def test_get_sampler_builds_each_builtin() -> None:
    cases = {
        "uniform:low=1,high=4": UniformDepth(1, 4),
        "fixed:depth=2": FixedDepth(2),
        "seeded:low=0,high=5,seed=3": SeededDepth(0, 5, seed=3),
        "bernoulli:max_depth=6,p=0.8,seed=1": BernoulliDepth(6, 0.8, seed=1),
        "geometric:p=0.25,max_depth=9,seed=2": GeometricDepth(0.25, 9, seed=2),
        "scheduled:start=1,end=6,steps=100,low=1,seed=4": ScheduledDepth(1, 6, 100, low=1, seed=4),
    }
    for spec, expected in cases.items():
        sampler = get_sampler(spec)
        assert type(sampler) is type(expected), spec
        assert repr(sampler) == repr(expected), spec


def test_keyword_arguments_are_merged_into_the_spec() -> None:
    generator = torch.Generator().manual_seed(11)
    sampler = get_sampler("bernoulli:max_depth=4", p=0.25, generator=generator)
    assert isinstance(sampler, BernoulliDepth)
    assert (sampler.max_depth, sampler.p, sampler.generator) == (4, 0.25, generator)
    assert repr(get_sampler("fixed", depth=3)) == "FixedDepth(depth=3)"


def test_a_parameter_in_both_the_spec_and_the_keywords_is_an_error() -> None:
    with pytest.raises(TypeError, match=r"^sampler 'fixed': parameter 'depth' is given both"):
        get_sampler("fixed:depth=2", depth=3)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("bernoulli:max_depth=4,q=0.5", TypeError, r"^sampler 'bernoulli' has no parameter 'q'"),
        ("bernoulli", TypeError, r"^sampler 'bernoulli' needs parameter 'max_depth'"),
        ("geometric:max_depth=3", TypeError, r"^sampler 'geometric' needs parameter 'p'"),
        (
            "bernoulli:max_depth=4,p=nan",
            ValueError,
            r"^sampler 'bernoulli': p must be a probability",
        ),
        ("bernoulli:max_depth=4,p=2", ValueError, r"^sampler 'bernoulli': p must be a probability"),
        ("geometric:p=0,max_depth=3", ValueError, r"^sampler 'geometric': p must be a probability"),
        ("scheduled:start=1,end=3,steps=-1", ValueError, r"^sampler 'scheduled': steps must be"),
        ("seeded:seed=x", TypeError, r"^sampler 'seeded': seed must be an int, got 'x'"),
    ],
)
def test_bad_parameters_name_the_sampler_and_the_parameter(
    spec: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        get_sampler(spec)


def test_an_unknown_name_is_a_lookup_error_listing_the_samplers() -> None:
    with pytest.raises(
        UnknownPluginError, match=r"unknown sampler 'nope'; the samplers are: "
    ) as info:
        get_sampler("nope:depth=1")
    assert isinstance(info.value, LookupError)
    for name in BUILTINS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("bernouli", "bernoulli"), ("unifrom", "uniform"), ("Fixed", "fixed"), ("seded", "seeded")],
)
def test_an_unknown_name_suggests_the_closest_one(typo: str, meant: str) -> None:
    with pytest.raises(UnknownPluginError, match=rf"; did you mean '{meant}'\?$"):
        get_sampler(typo)


def test_a_name_far_from_every_sampler_gets_no_suggestion() -> None:
    with pytest.raises(UnknownPluginError) as info:
        get_sampler("zzzzzzzz")
    assert "did you mean" not in str(info.value)


def test_a_parameter_error_is_chained_to_the_samplers_own() -> None:
    with pytest.raises(ValueError, match=r"^sampler 'fixed': depth must be") as info:
        get_sampler("fixed", depth=-1)
    assert type(info.value) is ValueError
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value) == f"sampler 'fixed': {info.value.__cause__}"


def test_a_plugins_own_error_keeps_its_type_and_message_with_a_note() -> None:
    # An exception class whose constructor takes more than a message: retyping it as
    # type(error)(message) would fail with a TypeError and lose the plugin's message.
    raised = json.JSONDecodeError("Expecting value", "{not json", 1)

    @register_sampler("configured")
    def configured() -> DepthSampler:
        raise raised

    with pytest.raises(json.JSONDecodeError) as info:
        get_sampler("configured")
    assert info.value is raised
    assert str(info.value) == "Expecting value: line 1 column 2 (char 1)"
    assert (info.value.doc, info.value.pos) == ("{not json", 1)
    assert getattr(info.value, "__notes__", None) == ["raised by sampler 'configured'"]


def test_a_plugins_other_errors_pass_through_with_a_note() -> None:
    @register_sampler("offline")
    def offline() -> DepthSampler:
        raise OSError(2, "no such file", "depths.txt")

    with pytest.raises(OSError, match=r"no such file") as info:
        get_sampler("offline")
    assert (info.value.errno, info.value.filename) == (2, "depths.txt")
    assert getattr(info.value, "__notes__", None) == ["raised by sampler 'offline'"]


# --- register_sampler -----------------------------------------------------------------


def test_register_returns_the_class_and_makes_it_gettable() -> None:
    assert register_sampler("two")(TwoDepth) is TwoDepth
    assert isinstance(get_sampler("two"), TwoDepth)
    assert "two" in available_samplers()


def test_a_factory_function_registers_with_its_parameters_checked() -> None:
    @register_sampler("deep")
    def deep(depth: int, *, scale: int = 1) -> FixedDepth:
        return FixedDepth(depth * scale)

    assert get_sampler("deep:depth=2,scale=3").sample() == 6
    with pytest.raises(TypeError, match=r"^sampler 'deep' has no parameter 'size'"):
        get_sampler("deep:depth=2,size=1")
    with pytest.raises(TypeError, match=r"^sampler 'deep' needs parameter 'depth'"):
        get_sampler("deep")


def test_a_factory_that_returns_no_sampler_is_caught_when_called() -> None:
    register_sampler("broken")(lambda: 3)
    with pytest.raises(
        TypeError, match=r"^sampler 'broken' must satisfy the DepthSampler protocol"
    ):
        get_sampler("broken")


def test_a_taken_name_is_an_error_unless_overwritten() -> None:
    register_sampler("two")(TwoDepth)
    with pytest.raises(ValueError, match=r"already registered as 'two'.*overwrite=True"):
        register_sampler("two")(FixedDepth)
    with pytest.raises(ValueError, match=r"already registered as 'uniform'"):
        register_sampler("uniform")(TwoDepth)
    register_sampler("two", overwrite=True)(FixedDepth)
    assert isinstance(get_sampler("two:depth=1"), FixedDepth)


def test_unregister_removes_a_name() -> None:
    register_sampler("two")(TwoDepth)
    unregister_sampler("two")
    assert "two" not in available_samplers()
    with pytest.raises(UnknownPluginError):
        get_sampler("two")
    with pytest.raises(UnknownPluginError, match=r"no sampler is registered as 'two'"):
        unregister_sampler("two")


@given(st.sampled_from(["", "a:b", "a,b", "a=b", " a", "a b", "-a", ".a", "ä"]))
def test_names_that_cannot_be_written_in_a_spec_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match=r"^name must be letters, digits"):
        register_sampler(name)


@given(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,10}", fullmatch=True))
def test_a_registered_name_round_trips_through_a_spec(name: str) -> None:
    register_sampler(name, overwrite=True)(TwoDepth)
    try:
        assert isinstance(get_sampler(f" {name} "), TwoDepth)
        assert isinstance(get_sampler(f"{name}:"[:-1]), TwoDepth)
    finally:
        unregister_sampler(name)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (3, r"got 3 of type int, which is not callable"),
        (object, r"the class object has no sample\(\) method"),
        (TwoDepth(), r"got the sampler instance .*; register its class or a factory"),
    ],
)
def test_only_sampler_factories_register(factory: object, match: str) -> None:
    with pytest.raises(
        TypeError, match=rf"^register_sampler\('x'\) needs a DepthSampler factory: {match}"
    ):
        register_sampler("x")(factory)  # type: ignore[type-var]
    assert "x" not in available_samplers()


def test_a_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match=r"^name must be a string, got 3 of type int"):
        register_sampler(3)  # type: ignore[arg-type]


# --- entry points: stochdepth's own ---------------------------------------------------


def test_the_builtins_are_listed_once_in_the_registrys_table() -> None:
    # One place: the table. stochdepth declares no entry points of its own (they would
    # be a second list to keep in step), and each built-in is found through the
    # registry in a fresh interpreter, as a user's first call finds it.
    own = [
        entry
        for entry in importlib.metadata.entry_points(group=_registry.ENTRY_POINT_GROUP)
        if entry.dist is not None and entry.dist.name == "stochdepth"
    ]
    assert own == []
    assert dict(_registry.BUILTIN_SAMPLERS) == BUILTINS
    assert dict(_registry.SAMPLERS.builtins) == BUILTINS
    names = ", ".join(map(repr, BUILTINS))
    result = run_python(
        "-c",
        "import stochdepth\n"
        "from stochdepth.samplers._registry import lookup_sampler\n"
        "print(stochdepth.available_samplers())\n"
        f"print([lookup_sampler(name).__qualname__ for name in ({names})])\n",
    )
    listed, found = result.stdout.splitlines()
    assert set(BUILTINS) <= set(ast.literal_eval(listed))
    assert ast.literal_eval(found) == [factory.__qualname__ for factory in BUILTINS.values()]


def test_the_builtins_are_listed_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = available_samplers()
    assert set(BUILTINS) <= set(names)


# --- entry points: plugins from other distributions ------------------------------------

PluginMaker = Callable[..., Path]


@pytest.fixture
def make_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginMaker]:
    """Install fake distributions on ``sys.path``: a dist-info folder and a module each."""
    modules: list[str] = []

    def make(dist: str, entry_points: dict[str, str], module: str = "", source: str = "") -> Path:
        info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[stochdepth.samplers]\n{lines}")
        if module:
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)
        refresh_samplers()
        return tmp_path

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for module in modules:
        sys.modules.pop(module, None)


GOOD_PLUGIN = """
    class HalfDepth:
        '''Half of max_depth, always.'''

        def __init__(self, max_depth: int = 4) -> None:
            self.min_depth = self.max_depth = max_depth // 2

        def sample(self) -> int:
            return self.max_depth
"""


def test_a_plugin_is_found_lazily_and_usable_by_name(make_plugin: PluginMaker) -> None:
    make_plugin("half-plugin", {"half": "half_plugin:HalfDepth"}, "half_plugin", GOOD_PLUGIN)
    assert "half_plugin" not in sys.modules  # found, not imported
    sampler = get_sampler("half:max_depth=6")
    assert type(sampler).__name__ == "HalfDepth"
    assert sampler.sample() == 3
    assert "half" in available_samplers()


def test_plugins_are_cached_until_refreshed(make_plugin: PluginMaker, tmp_path: Path) -> None:
    make_plugin("half-plugin", {"half": "half_plugin:HalfDepth"}, "half_plugin", GOOD_PLUGIN)
    assert "half" in available_samplers()
    info = tmp_path / "half_plugin-1.0.dist-info"
    (info / "entry_points.txt").write_text("[stochdepth.samplers]\n")
    assert "half" in available_samplers()  # cached
    refresh_samplers()
    assert "half" not in available_samplers()


def test_a_plugin_that_fails_to_import_warns_when_listed_and_errors_by_name(
    make_plugin: PluginMaker,
) -> None:
    make_plugin(
        "bad-plugin", {"bad": "bad_plugin:Sampler"}, "bad_plugin", "import no_such_module\n"
    )
    with pytest.warns(PluginWarning) as caught:
        names = available_samplers()
    assert "bad" not in names
    assert set(BUILTINS) <= set(names)  # listing goes on
    message = str(caught[0].message)
    assert "entry point 'bad = bad_plugin:Sampler' from bad-plugin 1.0" in message
    assert "ModuleNotFoundError" in message
    with pytest.raises(
        PluginError,
        match=(
            r"sampler 'bad' comes from the plugin entry point 'bad = bad_plugin:Sampler' "
            r"from bad-plugin 1.0, but it failed to load: ModuleNotFoundError"
        ),
    ):
        get_sampler("bad")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("Sampler = 3\n", r"got 3 of type int, which is not callable"),
        ("class Sampler:\n    pass\n", r"the class Sampler has no sample\(\) method"),
    ],
)
def test_a_plugin_that_is_no_sampler_warns_and_errors(
    make_plugin: PluginMaker, source: str, problem: str
) -> None:
    make_plugin("odd-plugin", {"odd": "odd_plugin:Sampler"}, "odd_plugin", source)
    with pytest.warns(
        PluginWarning,
        match=rf"'odd = odd_plugin:Sampler'.*does not provide a DepthSampler: {problem}",
    ):
        assert "odd" not in available_samplers()
    with pytest.raises(PluginError, match=problem):
        get_sampler("odd")


def test_a_missing_attribute_is_reported_too(make_plugin: PluginMaker) -> None:
    make_plugin("gone-plugin", {"gone": "half_plugin:NoSuchClass"}, "half_plugin", GOOD_PLUGIN)
    with pytest.warns(PluginWarning, match=r"failed to load: AttributeError"):
        available_samplers()


def test_two_plugins_with_one_name_warn_naming_both(make_plugin: PluginMaker) -> None:
    make_plugin("alpha-plugin", {"half": "half_plugin:HalfDepth"}, "half_plugin", GOOD_PLUGIN)
    make_plugin("beta-plugin", {"half": "half_plugin_b:HalfDepth"}, "half_plugin_b", GOOD_PLUGIN)
    with pytest.warns(PluginWarning) as caught:
        names = available_samplers()
    assert "half" in names
    messages = [str(w.message) for w in caught]
    assert any(
        "'half = half_plugin_b:HalfDepth' from beta-plugin 1.0" in m
        and "'half = half_plugin:HalfDepth' from alpha-plugin 1.0" in m
        for m in messages
    ), messages


def test_a_plugin_cannot_replace_a_builtin(make_plugin: PluginMaker) -> None:
    make_plugin("sneaky-plugin", {"fixed": "half_plugin:HalfDepth"}, "half_plugin", GOOD_PLUGIN)
    with pytest.warns(
        PluginWarning,
        match=r"'fixed = half_plugin:HalfDepth' from sneaky-plugin 1.0 is left out: it is shadowed",
    ):
        available_samplers()
    assert isinstance(get_sampler("fixed:depth=1"), FixedDepth)


def test_a_plugin_name_that_no_spec_can_hold_is_left_out(make_plugin: PluginMaker) -> None:
    make_plugin("colon-plugin", {"a:b": "half_plugin:HalfDepth"}, "half_plugin", GOOD_PLUGIN)
    with pytest.warns(PluginWarning, match=r"cannot be used in a sampler spec"):
        assert "a:b" not in available_samplers()


def test_each_broken_plugin_warns_once_per_discovery(make_plugin: PluginMaker) -> None:
    make_plugin(
        "bad-plugin", {"bad": "bad_plugin:Sampler"}, "bad_plugin", "raise RuntimeError('boom')\n"
    )
    with pytest.warns(PluginWarning, match="RuntimeError: boom"):
        available_samplers()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        available_samplers()
    refresh_samplers()
    with pytest.warns(PluginWarning, match="RuntimeError: boom"):
        available_samplers()


# --- plugins from the command line ----------------------------------------------------


def run_cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m stochdepth ARGS`` with the fake plugins of ``path`` importable."""
    return run_python("-m", "stochdepth", *args, check=False, env={"PYTHONPATH": str(path)})


def test_the_command_line_uses_and_lists_plugins(make_plugin: PluginMaker) -> None:
    path = make_plugin("half-plugin", {"half": "half_plugin:HalfDepth"}, "half_plugin", GOOD_PLUGIN)
    make_plugin(
        "bad-plugin", {"bad": "bad_plugin:Sampler"}, "bad_plugin", "import no_such_module\n"
    )
    listing = run_cli(path, "samplers")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert [line.split()[0] for line in lines] == sorted([*BUILTINS, "half"])
    assert any(
        line.startswith("half ")
        and "Half of max_depth, always. " in line + " "
        and "[half_plugin]" in line
        for line in lines
    ), lines
    assert listing.stderr.count("\n") == 1
    assert listing.stderr.startswith(
        "stochdepth samplers: warning: sampler plugin entry point 'bad = bad_plugin:Sampler'"
    )

    trained = run_cli(
        path, "train", "--sampler", "half:max_depth=4", "--steps", "20", "--log-every", "10"
    )
    assert trained.returncode == 0, trained.stderr
    assert len(trained.stdout.splitlines()) == 2
    assert trained.stderr.endswith("mean depth 2.000, depths 2:20\n")

    broken = run_cli(path, "train", "--sampler", "bad")
    assert broken.returncode == 2
    assert broken.stdout == ""
    assert broken.stderr.count("\n") == 1
    assert (
        "argument --sampler: sampler 'bad' comes from the plugin entry point "
        "'bad = bad_plugin:Sampler'" in broken.stderr
    )


def test_a_plugin_whose_constructor_raises_anything_is_one_line_on_the_command_line(
    make_plugin: PluginMaker,
) -> None:
    source = """
        class Touchy:
            min_depth = max_depth = 1

            def __init__(self) -> None:
                raise KeyError("no\\nway")

            def sample(self) -> int:
                return 1
    """
    path = make_plugin("touchy-plugin", {"touchy": "touchy_plugin:Touchy"}, "touchy_plugin", source)
    result = run_cli(path, "train", "--sampler", "touchy")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "argument --sampler:" in result.stderr


def test_every_public_registry_name_is_exported() -> None:
    for name in (
        "register_sampler",
        "unregister_sampler",
        "get_sampler",
        "available_samplers",
        "refresh_samplers",
        "UnknownPluginError",
        "PluginError",
        "PluginWarning",
    ):
        assert name in stochdepth.__all__
