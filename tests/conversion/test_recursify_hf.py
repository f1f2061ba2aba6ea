"""recursify on tiny Hugging Face models built from configs (no download): Llama, ViT, BERT."""

from __future__ import annotations

import io

import pytest
import torch

from stochdepth import RepeatedBlock, SeededDepth, UniformDepth, recursify

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")

pytestmark = [
    # transformers warns about batched generation without an attention mask (it has none
    # to infer here: pad and eos are one token); the inputs have no padding.
    pytest.mark.filterwarnings("ignore:.*attention mask.*"),
]

CORE = slice(1, 5)


def llama(seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=48,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config).double().eval()
    with torch.no_grad():  # norms that differ between layers, as trained ones do
        for name, param in model.named_parameters():
            if "layernorm" in name:
                param.uniform_(0.5, 1.5)
    return model


def convert(model: transformers.LlamaForCausalLM, **options: object) -> RepeatedBlock:
    model.model.layers = recursify(model.model.layers, core=CORE, **options)
    block = model.model.layers[1]
    assert isinstance(block, RepeatedBlock)
    return block


def tokens(rows: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(0, 48, (rows, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("block_size", [1, 2, 4])
@pytest.mark.parametrize("init", ["average", "first"])
def test_full_rank_llama_equals_the_original(block_size: int, init: str) -> None:
    original, converted = llama(), llama()
    convert(converted, block_size=block_size, init=init, lora_rank="full")
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(
            converted(ids, use_cache=False).logits,
            original(ids, use_cache=False).logits,
            rtol=0,
            atol=1e-12,
        )


def test_check_with_the_layers_keyword_arguments() -> None:
    model = llama()
    hidden = model.model.embed_tokens(tokens())
    positions = torch.arange(hidden.shape[1]).unsqueeze(0)
    kwargs = {"position_embeddings": model.model.rotary_emb(hidden, position_ids=positions)}
    layers = model.model.layers
    full = recursify(layers, core=CORE, lora_rank="full", check=hidden, check_kwargs=kwargs)
    shared = recursify(layers, core=CORE, check=hidden, check_kwargs=kwargs)
    assert full.report.max_difference < 1e-12
    assert shared.report.max_difference > 1e-3


def test_cached_generation_at_the_eval_depth_gives_the_original_tokens() -> None:
    """Each repeat writes under the layer_idx of the layer it replaces: one slot per layer."""
    original, converted = llama(), llama()
    convert(converted, lora_rank="full")
    ids = tokens()
    expected = original.generate(ids, max_new_tokens=6, do_sample=False)
    assert converted.generate(ids, max_new_tokens=6, do_sample=False).tolist() == expected.tolist()
    uncached = converted.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert uncached.tolist() == expected.tolist()


def test_a_cache_past_the_converted_repeats_is_refused() -> None:
    model = llama()
    block = convert(model, lora_rank=2)
    block.eval_depth = 5
    with pytest.raises(ValueError, match=r"repeat 5.*depth of at most 4.*use_cache=False"):
        model(tokens(), use_cache=True)
    model(tokens(), use_cache=False)  # without a cache, any depth runs
    assert block.last_depth == 5


def test_uptrains_with_a_random_depth() -> None:
    model = llama()
    block = convert(model, lora_rank=2, sampler=UniformDepth(1, 6), grad_depth=2)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = tokens(4, 9)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = model(ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert sum(block.depth_histogram.values()) == 8


def test_rebuilt_from_its_config_and_loaded() -> None:
    """Build the model from its config, convert it the same way, load the state_dict."""
    model = llama()
    convert(model, lora_rank=2, per_repeat_copies=True)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    rebuilt = transformers.LlamaForCausalLM(model.config).double().eval()
    convert(rebuilt, lora_rank=2, per_repeat_copies=True)
    buffer.seek(0)
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt(ids, use_cache=False).logits,
            model(ids, use_cache=False).logits,
            rtol=0,
            atol=0,
        )


def test_save_pretrained_round_trip_keeps_weights_deltas_and_sampler_state(tmp_path) -> None:
    """safetensors through save_pretrained, loaded into a model converted the same way."""
    from safetensors.torch import load_file

    model = llama()
    convert(model, lora_rank=2, per_repeat_copies=True, sampler=SeededDepth(2, 6, seed=5))
    model.train()
    for _ in range(3):  # move the sampler's generator on
        model(tokens(), use_cache=False)
    model.save_pretrained(tmp_path)
    rebuilt = transformers.LlamaForCausalLM(model.config).double()
    convert(rebuilt, lora_rank=2, per_repeat_copies=True, sampler=SeededDepth(2, 6, seed=9))
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"))
    model.eval(), rebuilt.eval()
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt(ids, use_cache=False).logits, model(ids, use_cache=False).logits, rtol=0, atol=0
        )
    state = torch.zeros(1, 7, 16, dtype=torch.float64)
    blocks = [m.model.layers[1].train() for m in (model, rebuilt)]
    assert [blocks[0].draw_depth(state) for _ in range(8)] == [
        blocks[1].draw_depth(state) for _ in range(8)
    ]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_cache_filled_at_another_depth_is_refused(attention: str) -> None:
    """Training-mode depths vary per step: a slot an earlier step skipped is caught."""
    model = llama()
    model.set_attn_implementation(attention)
    block = convert(model, sampler=SeededDepth(1, 4, seed=0))
    model.train()  # the depth is drawn at every step
    with pytest.raises(ValueError, match=r"holds \d+ positions where repeat 1's held"):
        model.generate(tokens(1, 5), max_new_tokens=6, do_sample=False)
    block.eval()  # eval_depth=4 at every step: the same generation runs
    model.eval()
    model.generate(tokens(1, 5), max_new_tokens=6, do_sample=False)


def test_vit_blocks_full_rank() -> None:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=8,
        patch_size=4,
        num_channels=1,
    )
    original = transformers.ViTModel(config).double().eval()
    for param in original.parameters():  # distinct layers, as pretrained ones are
        torch.nn.init.normal_(param, std=0.2)
    model = transformers.ViTModel(config).double().eval()
    model.load_state_dict(original.state_dict())
    model.layers = recursify(model.layers, core=slice(0, 4), block_size=2, lora_rank="full")
    images = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images).last_hidden_state,
            original(images).last_hidden_state,
            rtol=0,
            atol=1e-12,
        )


def test_bert_encoder_full_rank() -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
    )
    original = transformers.BertModel(config).double().eval()
    model = transformers.BertModel(config).double().eval()
    model.load_state_dict(original.state_dict())
    model.encoder.layer = recursify(model.encoder.layer, core=slice(1, 4), lora_rank="full")
    ids = tokens(2, 6) % 30
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids).last_hidden_state, original(ids).last_hidden_state, rtol=0, atol=1e-12
        )


def gradients(model: transformers.LlamaForCausalLM) -> dict[str, torch.Tensor]:
    model.train()
    ids = tokens(2, 7)
    model(ids, labels=ids, use_cache=False).loss.backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_recomputes_each_repeat_with_its_own_deltas() -> None:
    """The block's checkpoint=True selects each repeat's deltas again in the recomputation."""
    plain, checkpointed = llama(), llama()
    convert(plain, lora_rank=2, per_repeat_copies=True)
    convert(checkpointed, lora_rank=2, per_repeat_copies=True, checkpoint=True)
    expected, got = gradients(plain), gradients(checkpointed)
    assert expected.keys() == got.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=1e-12, msg=name)


def test_hugging_face_gradient_checkpointing_is_refused_with_deltas() -> None:
    """It would recompute every shared layer with the last repeat's deltas selected."""
    model = llama()
    convert(model, lora_rank=2)
    model.activation_checkpointing_enable()
    with pytest.raises(ValueError, match=r"gradient checkpointing on.*checkpoint=True"):
        gradients(model)
    # without deltas every repeat has the same weights: the recomputation is right
    shared, checkpointed = llama(), llama()
    convert(shared)
    convert(checkpointed)
    checkpointed.activation_checkpointing_enable()
    expected, got = gradients(shared), gradients(checkpointed)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=1e-12, msg=name)
