"""Tiny Llama models from configs (no downloads) with a RepeatedBlock, and their unrolled twins.

``repeated_llama`` builds a ``LlamaForCausalLM`` whose ``model.layers`` holds a prelude
layer, a :class:`~stochdepth.RepeatedBlock` around one ``LlamaDecoderLayer``, and a coda
layer. ``unrolled_llama`` builds the model whose repeated layers are distinct modules
with the same weights, the reference a DepthCache must match.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from stochdepth import FixedDepth, RepeatedBlock

VOCAB = 97


def llama_config(layers: int = 3, **overrides: Any) -> Any:
    """A tiny ``LlamaConfig``: width 32, 4 heads (2 key/value heads), a vocabulary of 97."""
    from transformers import LlamaConfig

    options: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    options.update(overrides)
    return LlamaConfig(**options)


def repeated_llama(depth: int = 4, seed: int = 0, **block_options: Any) -> Any:
    """Prelude, a RepeatedBlock of one decoder layer (``FixedDepth(depth)``), coda; in eval mode."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config())
    options: dict[str, Any] = {"eval_depth": depth, **block_options}
    model.model.layers[1] = RepeatedBlock(model.model.layers[1], FixedDepth(depth), **options)
    return model.eval()  # the new block too


def unrolled_llama(model: Any, depth: int) -> Any:
    """The model with ``depth`` distinct copies of the repeated layer (same weights)."""
    from transformers import LlamaForCausalLM

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = depth + 2
    unrolled = LlamaForCausalLM(config).eval()
    state = {}
    for key, value in model.state_dict().items():
        if not key.startswith("model.layers."):
            state[key] = value
            continue
        parts = key.split(".")
        index, rest = int(parts[2]), [part for part in parts[3:] if part != "layer"]
        if rest == ["_extra_state"]:
            continue
        targets = [0] if index == 0 else [depth + 1] if index == 2 else range(1, depth + 1)
        for target in targets:
            state[".".join(["model", "layers", str(target), *rest])] = value
    unrolled.load_state_dict(state, strict=True)
    return unrolled


def prompts(batch: int = 2, length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (no special tokens) and an all-ones attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    return ids, torch.ones_like(ids)


def greedy(model: Any, ids: torch.Tensor, mask: torch.Tensor, new: int = 8, **options: Any) -> Any:
    """Greedy ``generate()`` with the scores returned."""
    with torch.no_grad():
        return model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            **options,
        )
