"""Self-speculative decoding across depth: draft at a shallow depth, verify at full depth.

A model trained with a random depth is also a family of smaller models: the same weights
at fewer repeats. :func:`speculative_generate` drafts ``lookahead`` tokens with every
:class:`~stochdepth.RepeatedBlock` of the model at ``draft_depth`` repeats, then runs the
blocks' eval depth once over the last token and the drafts, keeps the drafts that the
full-depth model agrees with and adds the full-depth model's own next token. Greedy
output is that of greedy decoding at full depth; with sampling, the standard rejection
rule (Leviathan et al., Chen et al., 2023) makes the output distribution the full-depth
one.

Both run through one :class:`~stochdepth.DepthCache` (``policy="exact"``): a draft pass
writes the slots of repeats ``0 .. draft_depth - 1`` only, and reads the full-depth
passes' entries of those slots for the earlier positions (a repeat's keys and values at
a position do not depend on the repeats after it, so the verifier's shallow entries are
the draft's). Before the verification pass the drafts' entries are cropped off; after
it, the entries past the last accepted token are cropped off, so a rejected token leaves
nothing behind.

This module imports ``transformers`` through ``DepthCache`` (an optional dependency).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stochdepth._block import RepeatedBlock
from stochdepth._validation import check_int, describe
from stochdepth.exits._policy import ExitWhenConverged

from ._cache import DepthCache


@dataclass
class SpeculativeResult:
    """What :func:`speculative_generate` returns: the tokens and how the drafts fared.

    Args:
        sequences: The prompt and the new tokens, ``(1, prompt + new)``.
        drafted: Draft tokens proposed (and verified).
        accepted: Draft tokens the full-depth model accepted.
        full_passes: Forward passes at full depth (the prompt's included).
        draft_passes: Forward passes at ``draft_depth``.
        new_tokens: Tokens generated.
    """

    sequences: Tensor
    drafted: int = 0
    accepted: int = 0
    full_passes: int = 0
    draft_passes: int = 0
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        """The fraction of draft tokens accepted (``0.0`` when none was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_full_pass(self) -> float:
        """New tokens per full-depth forward pass (ordinary decoding: 1.0)."""
        return self.new_tokens / self.full_passes if self.full_passes else 0.0


def speculative_generate(
    model: nn.Module,
    input_ids: Tensor,
    *,
    draft_depth: int,
    lookahead: int,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
    cache: DepthCache | None = None,
) -> SpeculativeResult:
    """Generate with drafts at ``draft_depth`` verified at the blocks' eval depth.

    ``model`` is a causal language model (a Hugging Face ``...ForCausalLM``, say) whose
    layers hold one or more :class:`~stochdepth.RepeatedBlock` s, each with an int
    ``eval_depth`` (the full depth), or per-token exit (``per_token=True`` with an
    :class:`~stochdepth.ExitWhenConverged` eval depth: each verified position stops at
    its own depth, as in ordinary decoding), in eval mode. Each round drafts up to ``lookahead``
    tokens with every block at ``draft_depth`` repeats, then verifies them with one
    full-depth pass over the last token and the drafts: the drafts up to the first
    disagreement are kept, followed by the full-depth model's token at that position (or
    after the last draft, when all agree). Every round adds at least one token, and costs
    one full-depth pass.

    With ``do_sample=False`` the tokens are those of greedy decoding at full depth. With
    ``do_sample=True`` a draft token ``x`` is kept with probability ``min(1, p(x) / q(x))``
    (``p``, ``q``: the full-depth and draft distributions at ``temperature``), and the first
    rejected one is replaced by a sample of ``max(0, p - q)`` normalized, so each token is
    distributed as full-depth sampling's.

    Args:
        model: The causal LM, in eval mode; its forward takes ``input_ids``, ``cache``
            and ``use_cache`` and returns ``.logits``.
        input_ids: The prompt, ``(1, length)`` token ids (batch 1: the rounds of
            different rows would accept different numbers of drafts).
        draft_depth: The repeats of every block when drafting, an int >= 1 and at most
            each block's eval depth (or ``max_depth``).
        lookahead: The draft tokens per round, an int >= 1.
        max_new_tokens: The tokens to generate, an int >= 1.
        do_sample: Sample (the rejection rule) instead of greedy decoding.
        temperature: The sampling temperature, a float > 0 (with ``do_sample`` only).
        generator: The random generator of the samples and the acceptance draws.
        eos_token_id: Stop after this token; by default the model's
            ``generation_config.eos_token_id`` when it is an int, else none.
        cache: An empty ``DepthCache(model)`` (``policy="exact"``) to generate through;
            afterwards it holds the keys and values of every position but the last
            token's, as after ``generate()``. By default a cache is made and closed.

    Returns:
        The sequences and the statistics: ``acceptance_rate``, ``tokens_per_full_pass``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``input_ids`` not an integer
            tensor, or an argument has the wrong type.
        ValueError: ``input_ids`` is not ``(1, length)`` with ``length >= 1``; the model
            is in training mode, holds no ``RepeatedBlock``, or a block's eval depth is
            neither an int nor per-token ``ExitWhenConverged`` (``"max"``, say, or
            ``ExitWhenConverged`` without ``per_token=True``); ``draft_depth`` exceeds
            a block's eval depth (its ``max_depth`` for per-token exit); an int
            argument is out of range; ``cache`` is not an empty exact ``DepthCache``
            of this model.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from stochdepth import RepeatedBlock, speculative_generate
        >>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...                      num_hidden_layers=3, num_attention_heads=4)
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = LlamaForCausalLM(config)
        >>> model.model.layers[1] = RepeatedBlock(model.model.layers[1], eval_depth=6)
        >>> model = model.eval()
        >>> out = speculative_generate(model, torch.tensor([[5, 9, 2, 7]]),
        ...                            draft_depth=2, lookahead=3, max_new_tokens=8)
        >>> out.sequences.shape
        torch.Size([1, 12])
        >>> 0.0 <= out.acceptance_rate <= 1.0
        True
    """
    blocks = _check_model(model)
    full_depth = _check_blocks(blocks)
    draft_depth = check_int("draft_depth", draft_depth, minimum=1)
    if draft_depth > full_depth:
        raise ValueError(
            f"draft_depth must be at most the blocks' eval depth ({full_depth}), got {draft_depth}"
        )
    lookahead = check_int("lookahead", lookahead, minimum=1)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
    _check_ids(input_ids)
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool, got {describe(do_sample)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float > 0, got {describe(temperature)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be a float > 0, got {temperature!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")
    if eos_token_id is None:
        default = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_token_id = default if isinstance(default, int) else None
    elif isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int):
        raise TypeError(f"eos_token_id must be an int or None, got {describe(eos_token_id)}")

    _check_cache(cache, blocks)
    decoder = _Decoder(model, blocks, draft_depth, float(temperature), do_sample, generator)
    decoder.cache = DepthCache(model) if cache is None else cache
    with torch.no_grad():
        try:
            return decoder.generate(input_ids, lookahead, max_new_tokens, eos_token_id)
        finally:
            if cache is None:
                decoder.cache.close()


class _Decoder:
    """One speculative generation: the cache, the choice of tokens, the statistics.

    The greedy path keeps the tokens of a round on the model's device: each draft's
    argmax is fed to the next draft pass as it is, and the drafts and the verifier's
    choices are read back to the host once a round (one ``tolist``), not once a token.
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: list[RepeatedBlock],
        draft_depth: int,
        temperature: float,
        do_sample: bool,
        generator: torch.Generator | None,
    ) -> None:
        self.model = model
        self.blocks = blocks
        self.draft_depth = draft_depth
        self.temperature = temperature
        self.do_sample = do_sample
        self.generator = generator
        self.cache: DepthCache

    def logits(self, ids: Tensor) -> Tensor:
        """The next-token logits after each of ``ids`` (one row), ``(len, vocab)``."""
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True)
        logits: Tensor = out.logits[0]
        return logits

    @contextlib.contextmanager
    def drafting(self) -> Iterator[None]:
        """Every block at ``draft_depth`` repeats inside."""
        saved = [block.eval_depth for block in self.blocks]
        for block in self.blocks:
            block.eval_depth = self.draft_depth
        try:
            yield
        finally:
            for block, depth in zip(self.blocks, saved, strict=True):
                block.eval_depth = depth

    def probabilities(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits.float() / self.temperature, dim=-1)

    def sample(self, probs: Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def generate(
        self, input_ids: Tensor, lookahead: int, max_new_tokens: int, eos: int | None
    ) -> SpeculativeResult:
        result = SpeculativeResult(sequences=input_ids)
        logits = self.logits(input_ids)[-1:]
        result.full_passes = 1
        if self.do_sample:
            first = self.sample(self.probabilities(logits[0]))
            last = torch.tensor([[first]], dtype=input_ids.dtype, device=input_ids.device)
        else:
            last = logits.argmax(dim=-1, keepdim=True).to(input_ids.dtype)  # (1, 1)
        tokens: list[int] = [int(last)]
        while len(tokens) < max_new_tokens and tokens[-1] != eos:
            base = self.cache.get_seq_length()  # every position but the last token's
            count = min(lookahead, max_new_tokens - len(tokens) - 1)
            new, last, kept, drafted = self.round(last, count, base)
            result.draft_passes += drafted
            result.full_passes += 1
            result.drafted += drafted
            result.accepted += kept
            # The positions fed and kept: the last token and the accepted drafts.
            self.cache.crop(base + kept + 1 - self.cache.get_seq_length())
            if eos is not None and eos in new:
                new = new[: new.index(eos) + 1]
            tokens.extend(new)
        tokens = tokens[:max_new_tokens]
        if eos is not None and eos in tokens:
            tokens = tokens[: tokens.index(eos) + 1]
        new_ids = torch.tensor([tokens], dtype=input_ids.dtype, device=input_ids.device)
        result.sequences = torch.cat([input_ids, new_ids], dim=1)
        # Accepted drafts after an eos token are not returned: nor are their entries kept.
        self.cache.crop(result.sequences.shape[1] - 1 - self.cache.get_seq_length())
        result.new_tokens = len(tokens)
        return result

    def round(self, last: Tensor, count: int, base: int) -> tuple[list[int], Tensor, int, int]:
        """Draft ``count`` tokens after ``last`` (``(1, 1)``) and verify them in one pass.

        Returns:
            The new tokens (the accepted drafts and the verifier's token), the last of
            them as a ``(1, 1)`` tensor, the number of drafts accepted and drafted.
        """
        if self.do_sample:
            return self.round_sampled(last, count, base)
        ids = self.draft_greedy(last, count)
        self.cache.crop(base - self.cache.get_seq_length())  # the drafts' entries
        chosen = self.logits(ids).argmax(dim=-1).to(ids.dtype)  # (count + 1,)
        values = torch.cat([chosen, ids[0, 1:]]).tolist()  # one read back a round
        choices, drafts = values[: count + 1], values[count + 1 :]
        kept = 0
        while kept < count and drafts[kept] == choices[kept]:
            kept += 1
        return [*drafts[:kept], choices[kept]], chosen[kept : kept + 1].view(1, 1), kept, count

    def round_sampled(
        self, last: Tensor, count: int, base: int
    ) -> tuple[list[int], Tensor, int, int]:
        """:meth:`round` with sampled drafts and the rejection rule."""
        drafts, draft_probs = self.draft_sampled(int(last), count)
        ids = torch.tensor([[int(last), *drafts]], dtype=last.dtype, device=last.device)
        self.cache.crop(base - self.cache.get_seq_length())  # the drafts' entries
        kept, extra = self.judge_sampled(drafts, draft_probs, self.logits(ids))
        return [*drafts[:kept], extra], ids.new_tensor([[extra]]), kept, count

    def draft_greedy(self, last: Tensor, count: int) -> Tensor:
        """``last`` followed by ``count`` greedy drafts, ``(1, 1 + count)``, on the device."""
        tokens = [last]
        with self.drafting():
            for _ in range(count):
                logits = self.logits(tokens[-1])
                tokens.append(logits[-1:].argmax(dim=-1, keepdim=True).to(last.dtype))
        return torch.cat(tokens, dim=1)

    def draft_sampled(self, last: int, count: int) -> tuple[list[int], list[Tensor]]:
        """``count`` sampled draft tokens after ``last``, and the draft's distributions."""
        drafts: list[int] = []
        probs: list[Tensor] = []
        token = last
        device = next(self.model.parameters()).device
        with self.drafting():
            for _ in range(count):
                logits = self.logits(torch.tensor([[token]], device=device))[-1]
                probs.append(self.probabilities(logits))
                token = self.sample(probs[-1])
                drafts.append(token)
        return drafts, probs

    def judge_sampled(
        self, drafts: list[int], draft_probs: list[Tensor], logits: Tensor
    ) -> tuple[int, int]:
        """How many drafts to keep (the rejection rule), and the token after them."""
        target = self.probabilities(logits)
        for index, token in enumerate(drafts):
            p, q = target[index], draft_probs[index]
            if self.uniform() * float(q[token]) < float(p[token]):  # u < p/q
                continue
            residual = torch.clamp(p - q, min=0)
            total = residual.sum()
            # p == q exactly leaves nothing: the rejection then has probability 0.
            return index, self.sample(residual / total if total > 0 else p)
        return len(drafts), self.sample(target[len(drafts)])


def _check_model(model: object) -> list[RepeatedBlock]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    if model.training:
        raise ValueError(
            "speculative_generate needs the model in eval mode (model.eval()): in training "
            "mode the blocks draw a random depth, and full depth is their eval depth"
        )
    blocks = [module for module in model.modules() if isinstance(module, RepeatedBlock)]
    if not blocks:
        raise ValueError(
            f"model must hold a RepeatedBlock to draft at a shallower depth, but "
            f"{type(model).__name__} holds none"
        )
    for block in blocks:
        if block.training:
            raise ValueError(
                "speculative_generate needs every RepeatedBlock in eval mode, but one is in "
                "training mode (call model.eval() after adding the blocks)"
            )
    return blocks


def _check_blocks(blocks: list[RepeatedBlock]) -> int:
    """The full depth: the smallest int eval depth (or per-token exit's ``max_depth``)."""
    depths = []
    for block in blocks:
        depth = block.eval_depth
        if isinstance(depth, ExitWhenConverged):
            if not block.per_token:
                raise ValueError(
                    "speculative_generate verifies with ExitWhenConverged only with "
                    "per_token=True: without it the verification pass stops when all of its "
                    "positions have converged, so a token's depth would depend on the drafts "
                    "verified with it (use RepeatedBlock(..., per_token=True), or an int "
                    "eval_depth)"
                )
            depths.append(depth.max_depth)  # each position stops at its own depth
            continue
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise ValueError(
                f"speculative_generate needs each RepeatedBlock's eval_depth to be an int (the "
                f"full depth the drafts are verified at), got {depth!r}"
            )
        depths.append(depth)
    return min(depths)


def _check_cache(cache: object, blocks: list[RepeatedBlock]) -> None:
    if cache is None:
        return
    if not isinstance(cache, DepthCache):
        raise TypeError(f"cache must be a DepthCache or None, got {describe(cache)}")
    if cache.policy != "exact" or not all(cache.tracks_block(block) for block in blocks):
        raise ValueError(
            f"cache must be a DepthCache(model) of this model with policy='exact' (the drafts "
            f"read the full-depth passes' shallow slots), got {cache!r}"
        )
    if cache.get_seq_length() != 0:
        raise ValueError(
            f"cache must be empty (speculative_generate runs the prompt itself), but it holds "
            f"{cache.get_seq_length()} positions"
        )


def _check_ids(input_ids: object) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"input_ids must be an int64 tensor of token ids, got {describe(input_ids)}"
        )
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
        raise ValueError(
            f"input_ids must have shape (1, length) with length >= 1 (speculative decoding "
            f"runs one sequence at a time), got shape {tuple(input_ids.shape)}"
        )


__all__ = ["SpeculativeResult", "speculative_generate"]
