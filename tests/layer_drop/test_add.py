"""add_layer_drop and LayerDropList iteration: layer drop where the host model owns the loop."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import torch
from torch import nn

import stochdepth
from stochdepth import LayerDropList, add_layer_drop

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency")


def count_calls(layers: nn.Module) -> list[int]:
    """A list of call counts, one per child of ``layers``, kept up to date by hooks."""
    counts = [0] * len(list(layers.children()))
    for index, layer in enumerate(layers.children()):

        def hook(*_: object, index: int = index) -> None:
            counts[index] += 1

        layer.register_forward_pre_hook(hook)
    return counts


def tiny_bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=6,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config)


def tiny_encoder() -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)


def test_bert_drops_layers_in_training_and_equals_the_original_in_eval() -> None:
    original = tiny_bert()
    model = copy.deepcopy(original)
    stack = add_layer_drop(model, 0.5, seed=0)
    assert model.encoder.layer is stack
    assert set(model.state_dict()) == set(original.state_dict()) | {"encoder.layer._extra_state"}
    counts = count_calls(stack)
    ids = torch.randint(0, 40, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    model.train()
    for _ in range(20):
        model(input_ids=ids, attention_mask=mask)
    assert stack.draws == 20
    assert counts == stack.layer_runs
    assert 20 < sum(counts) < 100  # about half of 6 * 20 ran
    model.eval()
    original.eval()
    before = list(counts)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = original(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(got, want)
    assert [a - b for a, b in zip(counts, before, strict=True)] == [1] * 6


def test_the_host_runs_the_drawn_layers_in_order() -> None:
    model = tiny_encoder()
    reference = copy.deepcopy(model)
    stack = add_layer_drop(model, 0.5, seed=3)
    x = torch.randn(2, 5, 8)
    model.train()
    reference.train()
    for _ in range(5):
        got = model(x)
        keep = stack.last_keep.tolist()
        kept = [layer for layer, k in zip(reference.layers, keep, strict=True) if k]
        want = x
        for layer in kept:
            want = layer(want)
        torch.testing.assert_close(got, want)


def test_a_transformer_encoder_drops_in_training_and_equals_the_original_in_eval() -> None:
    original = tiny_encoder()
    model = copy.deepcopy(original)
    stack = add_layer_drop(model, [0.0, 0.5, 0.5, 0.5, 0.5, 1.0], seed=1)
    counts = count_calls(stack)
    x = torch.randn(2, 5, 8)
    for _ in range(10):
        model(x)
    assert counts[0] == 10
    assert counts[5] == 0
    assert counts == stack.layer_runs
    assert 0 < sum(counts[1:5]) < 40
    model.eval()
    original.eval()
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


def test_iteration_is_the_same_draw_as_a_call_and_follows_the_seed() -> None:
    layers = [nn.Linear(2, 2) for _ in range(5)]
    iterated = LayerDropList(layers, 0.5, seed=7)
    called = LayerDropList(layers, 0.5, seed=7)
    for _ in range(10):
        kept = list(iterated)
        called(torch.randn(1, 2))
        keep = called.last_keep
        assert keep is not None
        assert kept == [layer for layer, k in zip(layers, keep.tolist(), strict=True) if k]
    assert iterated.layer_runs == called.layer_runs


def test_a_slice_draws_once_and_cuts_as_llama_does() -> None:
    layers = [nn.Linear(2, 2) for _ in range(6)]
    stack = LayerDropList(layers, 0.5, seed=2)
    twin = LayerDropList(layers, 0.5, seed=2)
    for _ in range(5):
        keep = twin.draw_keep().tolist()
        assert stack[:4] == [layer for layer, k in zip(layers[:4], keep[:4], strict=True) if k]
    stack.eval()
    assert stack[1:3] == layers[1:3]
    stack.eval_layers = [0, 2, 5]
    assert stack[:3] == [layers[0], layers[2]]
    assert list(stack) == [layers[0], layers[2], layers[5]]


def test_llama_decoder_layers_drop_through_its_slice() -> None:
    config = transformers.LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    original = transformers.LlamaForCausalLM(config)
    model = copy.deepcopy(original)
    stack = add_layer_drop(model, 0.5, seed=0)
    assert model.model.layers is stack
    counts = count_calls(stack)
    ids = torch.randint(0, 40, (2, 6))
    model.train()
    for _ in range(8):
        model(input_ids=ids, use_cache=False)
    assert counts == stack.layer_runs
    assert sum(counts) < 32
    model.eval()
    original.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, original(input_ids=ids).logits)


def test_a_host_that_indexes_its_layers_is_loud() -> None:
    class Indexing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i in range(len(self.layers)):
                x = self.layers[i](x)
            return x

    model = add_layer_drop_and_return_model(Indexing())
    with pytest.raises(RuntimeError, match=r"without drawing from the LayerDropList at 'layers'"):
        model(torch.randn(1, 2))
    model.eval()
    model(torch.randn(1, 2))  # evaluation runs every layer: nothing to check


def add_layer_drop_and_return_model(model: nn.Module) -> nn.Module:
    add_layer_drop(model, 0.5, seed=0)
    return model


def test_a_model_with_layer_drop_pickles_and_keeps_its_draws() -> None:
    model = tiny_encoder()
    stack = add_layer_drop(model, 0.5, seed=4)
    x = torch.randn(1, 3, 8)
    model(x)
    twin = pickle.loads(pickle.dumps(model))
    for _ in range(5):
        model(x)
        twin(x)
        assert torch.equal(stack.last_keep, twin.layers.last_keep)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"residual": True}, "residual=True"),
        ({"mode": "masked"}, "mode='masked'"),
    ],
)
def test_iterating_a_list_a_host_loop_cannot_apply_is_an_error(
    options: dict[str, object], named: str
) -> None:
    stack = LayerDropList([nn.Linear(2, 2) for _ in range(2)], 0.5, seed=0, **options)
    with pytest.raises(TypeError, match=f"this list has {named}: call it"):
        list(stack)
    stack.eval()
    assert len(list(stack)) == 2


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(TypeError, match=r"model must be an nn\.Module, got 3"):
        add_layer_drop(3, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="found no layer stack in Linear"):
        add_layer_drop(nn.Linear(2, 2), 0.5)
    encoder_decoder = nn.Module()
    encoder_decoder.encoder = tiny_encoder()
    encoder_decoder.decoder = tiny_encoder()
    with pytest.raises(ValueError, match=r"several layer stacks in Module: encoder\.layers, dec"):
        add_layer_drop(encoder_decoder, 0.5)
    add_layer_drop(encoder_decoder, 0.5, path="decoder.layers")
    with pytest.raises(ValueError, match="already is a LayerDropList"):
        add_layer_drop(encoder_decoder, 0.5, path="decoder.layers")
    with pytest.raises(ValueError, match="has no module 'middle'"):
        add_layer_drop(encoder_decoder, 0.5, path="middle.layers")
    with pytest.raises(TypeError, match=r"must be an nn\.ModuleList or nn\.Sequential"):
        add_layer_drop(encoder_decoder, 0.5, path="encoder.layers.0")
    with pytest.raises(ValueError, match="drop_rate must hold one probability per layer"):
        add_layer_drop(encoder_decoder, [0.5], path="encoder.layers")
    assert stochdepth.add_layer_drop is add_layer_drop


def test_per_row_in_the_host_loop_runs_each_row_as_if_alone() -> None:
    """nn.TransformerEncoder's own loop, per row, with its padding mask cut to the kept rows."""
    original = tiny_encoder()
    model = copy.deepcopy(original)
    stack = add_layer_drop(model, 0.5, per_sample=True, row_args=["src_key_padding_mask"], seed=5)
    assert stack.per_sample
    counts = [0] * 6
    for index, layer in enumerate(stack.children()):

        def rows_seen(_: nn.Module, args: tuple[torch.Tensor, ...], index: int = index) -> None:
            counts[index] += args[0].shape[0]

        layer.register_forward_pre_hook(rows_seen)
    x = torch.randn(4, 5, 8)
    padding = torch.zeros(4, 5, dtype=torch.bool)
    padding[1, 3:] = True
    padding[2, 1:] = True
    out = model(x, src_key_padding_mask=padding)
    keep = stack.last_keep
    assert keep is not None
    assert tuple(keep.shape) == (6, 4)
    assert counts == stack.layer_runs == keep.sum(dim=1).tolist()
    for row in range(4):
        want = x[row : row + 1]
        for index, layer in enumerate(original.layers):
            if keep[index, row]:
                want = layer(want, src_key_padding_mask=padding[row : row + 1])
        torch.testing.assert_close(out[row : row + 1], want)
    model.eval()
    original.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, src_key_padding_mask=padding), original(x, src_key_padding_mask=padding)
        )


def test_bert_per_row_drops_rows_with_the_attention_mask_cut() -> None:
    model = tiny_bert()
    stack = add_layer_drop(model, 0.5, per_sample=True, row_args=[0], seed=1)
    ids = torch.randint(0, 40, (4, 7))
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[0, 4:] = 0
    model.train()
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = stack.last_keep
    assert keep is not None
    assert tuple(keep.shape) == (6, 4)
    assert not keep.all()
    for row in range(4):  # each row's result is the model on that row alone, its mask cut
        alone = LayerDropList(list(stack.children()), 0.5, seed=0)
        alone.eval_layers = [i for i in range(6) if keep[i, row]]
        alone.eval()
        single = copy.copy(model)
        single.encoder = copy.copy(model.encoder)
        single.encoder.layer = alone
        single.eval()
        with torch.no_grad():
            want = single(input_ids=ids[row : row + 1], attention_mask=mask[row : row + 1])
        torch.testing.assert_close(out[row : row + 1], want.last_hidden_state)


def test_per_row_host_loop_errors_are_clear() -> None:
    stack = LayerDropList(
        [nn.Linear(2, 2) for _ in range(2)], 0.5, per_sample=True, output=0, seed=0
    )
    with pytest.raises(TypeError, match=r"output=0: call it"):
        list(stack)
    stack = LayerDropList([nn.Linear(2, 3), nn.Linear(3, 2)], 0.0, per_sample=True, seed=0)
    first, _ = list(stack)
    assert first.in_features == 2  # the layer's attributes, as a host may read them
    with pytest.raises(TypeError, match=r"layer 0 \(Linear\) turned \(2, 2\) into a tensor of"):
        first(torch.randn(2, 2))
    one, two = list(LayerDropList([nn.Identity(), nn.Identity()], 0.5, per_sample=True, seed=0))
    one(torch.randn(3, 2))
    with pytest.raises(ValueError, match="the draw was for 3 rows, but layer 1 got"):
        two(torch.randn(4, 2))
    assert one.index == 0
    assert isinstance(one.layer, nn.Identity)


def test_a_compiled_host_loop_draws_on_every_call() -> None:
    """torch.compile of the whole model: the draw runs outside the graph, every call."""
    model = tiny_encoder()
    stack = add_layer_drop(model, 0.5, seed=0)
    reference = copy.deepcopy(list(stack.children()))
    compiled = torch.compile(model)
    x = torch.randn(2, 3, 8)
    patterns = set()
    for _ in range(6):
        out = compiled(x)
        keep = stack.last_keep.tolist()
        patterns.add(tuple(keep))
        want = x
        for layer, kept in zip(reference, keep, strict=True):
            if kept:
                want = layer(want)
        torch.testing.assert_close(out, want)
    assert stack.draws == 6
    assert len(patterns) > 1


SMALL = {"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2}
HOSTS: dict[str, tuple[Any, str, Any]] = {
    # name: (model from a tiny config, the stack's path, the inputs of one forward pass)
    "vit": (
        lambda: transformers.ViTModel(
            transformers.ViTConfig(image_size=8, patch_size=4, intermediate_size=32, **SMALL)
        ),
        "layers",
        lambda: {"pixel_values": torch.randn(2, 3, 8, 8)},
    ),
    "gpt2": (
        lambda: transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                n_embd=16,
                n_layer=3,
                n_head=2,
                vocab_size=20,
                n_positions=16,
                bos_token_id=0,
                eos_token_id=0,
            )
        ),
        "transformer.h",
        lambda: {"input_ids": torch.randint(0, 20, (2, 5))},
    ),
    "roberta": (
        lambda: transformers.RobertaModel(
            transformers.RobertaConfig(
                vocab_size=20, max_position_embeddings=20, intermediate_size=32, **SMALL
            )
        ),
        "encoder.layer",
        lambda: {"input_ids": torch.randint(3, 20, (2, 5))},
    ),
    "wav2vec2": (
        lambda: transformers.Wav2Vec2Model(
            transformers.Wav2Vec2Config(
                intermediate_size=32,
                conv_dim=(8, 8),
                conv_stride=(2, 2),
                conv_kernel=(3, 3),
                num_conv_pos_embeddings=4,
                num_conv_pos_embedding_groups=2,
                layerdrop=0.0,
                mask_time_prob=0.0,
                **SMALL,
            )
        ),
        "encoder.layers",
        lambda: {"input_values": torch.randn(2, 40)},
    ),
    "qwen2": (
        lambda: transformers.Qwen2ForCausalLM(
            transformers.Qwen2Config(
                vocab_size=20, num_key_value_heads=1, intermediate_size=32, **SMALL
            )
        ),
        "model.layers",
        lambda: {"input_ids": torch.randint(0, 20, (2, 5))},
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_common_models_are_found_and_drop_through_their_own_loop(name: str) -> None:
    make, path, inputs = HOSTS[name]
    torch.manual_seed(0)
    original = make()
    model = copy.deepcopy(original)
    stack = add_layer_drop(model, 0.5, seed=0)
    found = model.get_submodule(path)
    assert found is stack
    counts = count_calls(stack)
    batch = inputs()
    model.train()
    for _ in range(6):
        model(**batch)  # the loud check would raise had the loop not drawn
    assert stack.draws == 6
    assert counts == stack.layer_runs
    assert sum(counts) < 18
    model.eval()
    original.eval()
    with torch.no_grad():
        got, want = model(**batch), original(**batch)
    assert torch.equal(got[0], want[0])


def test_an_encoder_decoder_names_both_stacks() -> None:
    config = transformers.WhisperConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        num_mel_bins=8,
        max_source_positions=8,
        max_target_positions=8,
    )
    model = transformers.WhisperModel(config)
    with pytest.raises(ValueError, match=r"encoder\.layers, decoder\.layers; pass path="):
        add_layer_drop(model, 0.1)
    assert isinstance(add_layer_drop(model, 0.1, path="decoder.layers"), LayerDropList)
