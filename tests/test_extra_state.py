"""Extra state as one uint8 tensor: the encoding, and every saver's round trip.

The state of a block's sampler and of a list's generator must come back from
``torch.load(weights_only=True)``, safetensors and ``torch.distributed.checkpoint`` with
the next depths identical; an old checkpoint whose extra state is a dict still loads.
Hugging Face's ``save_pretrained`` and ``Trainer`` are in tests/integrations/.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from stochdepth import LayerDropList, RepeatedBlock, ScheduledDepth, SeededDepth
from stochdepth._extra_state import decode_state, encode_state, from_bytes, to_bytes
from stochdepth.samplers._protocol import has_state

from support.processes import spawn_ranks
from support.spawn_workers import WORLD_SIZE, batch, make_model, train, train_passed_model
from support.strategies import extra_states, samplers


def assert_same_state(want: Any, got: Any) -> None:
    assert type(want) is type(got), (want, got)
    if isinstance(want, Tensor):
        assert want.dtype == got.dtype
        assert want.shape == got.shape
        assert torch.equal(want, got)
    elif isinstance(want, dict):
        assert list(want) == list(got)
        for key in want:
            assert_same_state(want[key], got[key])
    elif isinstance(want, list | tuple):
        assert len(want) == len(got)
        for a, b in zip(want, got, strict=True):
            assert_same_state(a, b)
    else:
        assert want == got


@given(state=extra_states)
def test_the_encoding_round_trips(state: dict[Any, Any]) -> None:
    tensor = encode_state(state)
    assert tensor.dtype == torch.uint8
    assert tensor.ndim == 1
    assert tensor.device.type == "cpu"
    assert_same_state(state, decode_state(tensor))


@given(state=extra_states)
def test_the_size_depends_on_the_structure_alone(state: dict[Any, Any]) -> None:
    def changed(value: Any) -> Any:
        if isinstance(value, bool):
            return not value
        if isinstance(value, int):
            return -value - 1
        if isinstance(value, float):
            return value / 3 + 1
        if isinstance(value, Tensor):
            return 1 - value if value.dtype != torch.bool else ~value
        if isinstance(value, dict):
            return {key: changed(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(changed(item) for item in value)
        return value

    assert len(to_bytes(changed(state))) == len(to_bytes(state))


def model(sampler: Any = None) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        RepeatedBlock(nn.Linear(4, 4), sampler or SeededDepth(0, 5, seed=1)),
        LayerDropList([nn.Linear(4, 4) for _ in range(4)], 0.5, seed=2),
    )


def draws(net: nn.Sequential, count: int = 8) -> list[Any]:
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    out = []
    for _ in range(count):
        net(x)
        out.append((net[0].last_depth, net[1].last_keep.tolist()))
    return out


def through_torch_save(state: dict[str, Any], _: Path) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)  # type: ignore[no-any-return]


def through_safetensors(state: dict[str, Any], _: Path) -> dict[str, Any]:
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors: a test dependency")
    return safetensors.load(safetensors.save(state))  # type: ignore[no-any-return]


def through_dcp(state: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A single-process ``torch.distributed.checkpoint``: it loads in place."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        # torch warns that no process group is up and it saves from one process: intended
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.save(state, checkpoint_id=tmp_path / "dcp")
        target = model(SeededDepth(0, 5, seed=99)).state_dict()  # another seed, same structure
        dcp.load(target, checkpoint_id=tmp_path / "dcp")
    return target


SAVERS = [through_torch_save, through_safetensors, through_dcp]


@pytest.mark.parametrize("saver", SAVERS, ids=lambda saver: saver.__name__)
def test_a_round_trip_continues_the_same_depths(saver: Any, tmp_path: Path) -> None:
    net = model()
    draws(net, 3)
    state = net.state_dict()
    assert isinstance(state["0._extra_state"], Tensor)
    assert isinstance(state["1._extra_state"], Tensor)
    after = draws(net)
    restored = model(SeededDepth(0, 5, seed=99))
    restored[1].reset_layer_runs()
    restored.load_state_dict(saver(state, tmp_path))
    assert restored[1].seed == 2
    assert restored[1].draws == 3
    assert draws(restored) == after


def test_the_state_keeps_its_size_as_training_goes_on() -> None:
    """DCP loads into tensors of the size the model has now: the size must not move."""
    net = model(ScheduledDepth(6, 1, steps=1000, seed=3))
    sizes = {key: state.shape for key, state in net.state_dict().items() if "extra" in key}
    draws(net, 300)
    assert {k: v.shape for k, v in net.state_dict().items() if "extra" in k} == sizes


@given(sampler=samplers().filter(has_state))  # the others draw from torch's or random's
def test_every_builtin_sampler_round_trips_through_safetensors(sampler: Any) -> None:
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors: a test dependency")
    block = RepeatedBlock(nn.Identity(), sampler)
    twin = copy.deepcopy(block)
    x = torch.zeros(1, 1)
    block(x)
    loaded = safetensors.load(safetensors.save(block.state_dict()))
    twin.load_state_dict(loaded)
    for _ in range(5):
        block(x)
        twin(x)
        assert block.last_depth == twin.last_depth


def test_an_old_checkpoint_with_dict_extra_state_loads() -> None:
    net = model()
    draws(net, 2)
    block, stack = net[0], net[1]
    old = {
        **{k: v for k, v in net.state_dict().items() if "extra" not in k},
        "0._extra_state": {"sampler": block.sampler.state_dict()},  # what 0.1 saved
        "1._extra_state": {
            "seed": stack.seed,
            "generator_state": stack.generator.get_state(),
            "layer_runs": torch.tensor(stack.layer_runs),
            "draws": stack.draws,
        },
    }
    buffer = io.BytesIO()
    torch.save(old, buffer)
    after = draws(net)
    restored = model(SeededDepth(0, 5, seed=99))
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert draws(restored) == after


def test_a_bad_extra_state_is_refused_clearly() -> None:
    block = RepeatedBlock(nn.Identity(), SeededDepth(0, 3, seed=0))
    with pytest.raises(ValueError, match=r"must start with b'SDX1'"):
        block.set_extra_state(torch.zeros(12, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"uint8 tensor, got one of dtype torch\.float32"):
        block.set_extra_state(torch.zeros(12))
    with pytest.raises(ValueError, match="on the meta device"):
        block.set_extra_state(torch.empty(12, dtype=torch.uint8, device="meta"))
    with pytest.raises(TypeError, match=r"a uint8 tensor .* or a mapping .* got 3"):
        block.set_extra_state(3)
    cut = encode_state({"a": torch.arange(10)})[:-3]
    with pytest.raises(ValueError, match="cut short"):
        block.set_extra_state(cut)
    with pytest.raises(ValueError, match="more than its header describes"):
        from_bytes(to_bytes({"a": 1}) + b"\x00")
    with pytest.raises(TypeError, match=r"state\['a'\]\[1\] must be None, a bool"):
        to_bytes({"a": [1, object()]})


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_copies_keep_the_generators_mid_sequence(how: str) -> None:
    net = model()
    draws(net, 3)
    twin = pickle.loads(pickle.dumps(net)) if how == "pickle" else copy.deepcopy(net)
    assert draws(twin) == draws(net)


def test_a_sampler_pickled_with_a_dict_state_still_unpickles() -> None:
    sampler = SeededDepth(0, 9, seed=4)
    sampler.sample()
    twin = SeededDepth.__new__(SeededDepth)
    twin.__setstate__({"params": {"low": 0, "high": 9}, "state": sampler.state_dict()})
    assert [twin.sample() for _ in range(5)] == [sampler.sample() for _ in range(5)]


def test_a_model_passed_to_spawned_ranks_trains_with_its_generators_intact(
    tmp_path: Path,
) -> None:
    """``mp.spawn`` pickles the model through shared memory (pytorch issue 146828)."""
    parent = make_model()
    reference = copy.deepcopy(parent)
    results = spawn_ranks(train_passed_model, WORLD_SIZE, tmp_path, deadline_s=240, extra=(parent,))
    for rank, result in enumerate(results):
        assert "error" not in result, f"rank {rank}:\n{result.get('error')}"
    first, second = results
    assert first["depths"] == second["depths"]
    assert first["keeps"] == second["keeps"]
    for key, value in first["weights"].items():
        assert torch.equal(value, second["weights"][key]), key
    # The ranks drew what the parent's model would have drawn next.
    x, y = batch()
    alone = train(reference, reference, x, y)
    assert first["depths"] == alone["depths"]
    assert first["keeps"] == alone["keeps"]


@given(data=st.data())
def test_modules_built_on_the_meta_device_keep_their_state_on_the_cpu(data: st.DataObject) -> None:
    """from_pretrained builds the model under a meta default device, then loads it."""
    with torch.device("meta"):
        sampler = data.draw(samplers())
        block = RepeatedBlock(nn.Linear(2, 2), sampler)
        stack = LayerDropList([nn.Linear(2, 2) for _ in range(3)], 0.5)
        state = nn.Sequential(block, stack).state_dict()
    for key in ("0._extra_state", "1._extra_state"):
        assert state[key].device.type == "cpu", key
    decode_state(state["0._extra_state"])
    assert stack.draw_keep().device.type == "cpu"
    assert block.sampler.sample() >= 0
