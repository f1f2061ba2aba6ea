"""speculative_generate: drafts at a shallow depth, verified at full depth, exact output."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

from stochdepth import DepthCache, ExitWhenConverged, RepeatedBlock, speculative_generate

from support.tiny_llama import greedy, llama_config, prompts, repeated_llama

pytest.importorskip("transformers", reason="speculative decoding runs through a DepthCache (hf)")

DEPTH = 4


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return repeated_llama(DEPTH)


def full_depth_greedy(
    model: nn.Module, ids: torch.Tensor, new: int, **options: object
) -> torch.Tensor:
    out = greedy(model, ids, torch.ones_like(ids), new=new, cache=DepthCache(model), **options)
    sequences: torch.Tensor = out.sequences
    return sequences


@pytest.mark.parametrize("seed", [1, 2])
def test_greedy_output_is_full_depth_greedy_for_every_draft_depth_and_lookahead(
    model: nn.Module, seed: int
) -> None:
    ids, _ = prompts(batch=1, length=6, seed=seed)
    reference = full_depth_greedy(model, ids, new=12)
    rates = {}
    for draft_depth in range(1, DEPTH + 1):
        for lookahead in range(1, 6):
            out = speculative_generate(
                model, ids, draft_depth=draft_depth, lookahead=lookahead, max_new_tokens=12
            )
            assert torch.equal(out.sequences, reference), (draft_depth, lookahead)
            assert out.new_tokens == 12
            assert out.draft_passes == out.drafted
            rates[draft_depth, lookahead] = out.acceptance_rate
    # A random model's shallow drafts are poor, and the output is still exact.
    assert min(rates[1, k] for k in range(1, 6)) < 0.5
    # At full depth the draft is the verifier: every draft is accepted.
    assert all(rates[DEPTH, k] == 1.0 for k in range(1, 6))


def identity_repeats_model() -> nn.Module:
    model = repeated_llama(DEPTH, seed=3)
    layer = model.model.layers[1].layer
    with torch.no_grad():  # the residual branches write nothing: each repeat is the identity
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    return model


def test_identity_repeats_accept_every_draft_in_fewer_full_passes_than_tokens() -> None:
    model = identity_repeats_model()
    ids, _ = prompts(batch=1, length=5, seed=4)
    out = speculative_generate(model, ids, draft_depth=1, lookahead=4, max_new_tokens=16)
    assert torch.equal(out.sequences, full_depth_greedy(model, ids, new=16))
    assert out.acceptance_rate == 1.0
    assert out.accepted == out.drafted > 0
    assert out.full_passes < out.new_tokens
    # The prompt's pass gives one token; each round then 4 drafts and the verifier's token.
    assert out.full_passes == 1 + 3
    assert out.tokens_per_full_pass == 16 / 4


def test_a_rejection_leaves_no_stale_entry_in_the_cache(model: nn.Module) -> None:
    ids, _ = prompts(batch=1, length=6, seed=5)
    cache = DepthCache(model)
    out = speculative_generate(
        model, ids, draft_depth=1, lookahead=4, max_new_tokens=10, cache=cache
    )
    assert out.accepted < out.drafted  # some drafts were rejected and cropped off
    sequence = out.sequences
    # The cache holds every position but the last token's, in every slot of every repeat.
    assert cache.get_seq_length() == sequence.shape[1] - 1
    assert [cache.slot_count(index) for index in range(3)] == [1, DEPTH, 1]
    assert {slot.get_seq_length() for slot in cache.layers[1].slots} == {sequence.shape[1] - 1}
    with torch.no_grad():
        resumed = model(input_ids=sequence[:, -1:], cache=cache, use_cache=True).logits[0, -1]
        fresh = model(input_ids=sequence, cache=DepthCache(model), use_cache=True).logits[0, -1]
    torch.testing.assert_close(resumed, fresh, rtol=0, atol=1e-5)
    # Decoding on from that cache, a token a step, continues as full-depth greedy does.
    token = resumed.argmax().reshape(1, 1)
    tokens = [token]
    with torch.no_grad():
        for _ in range(4):
            logits = model(input_ids=token, cache=cache, use_cache=True).logits[0, -1]
            token = logits.argmax().reshape(1, 1)
            tokens.append(token)
    reference = full_depth_greedy(model, ids, new=15)
    assert torch.equal(torch.cat([sequence, *tokens], dim=1), reference)


def test_generate_after_a_rejection_continues_as_a_fresh_run(model: nn.Module) -> None:
    ids, _ = prompts(batch=1, length=6, seed=5)
    cache = DepthCache(model)
    out = speculative_generate(
        model, ids, draft_depth=1, lookahead=4, max_new_tokens=10, cache=cache
    )
    assert out.accepted < out.drafted
    sequence = out.sequences
    more = greedy(model, sequence, torch.ones_like(sequence), new=5, cache=cache).sequences
    assert torch.equal(more, full_depth_greedy(model, ids, new=15))


def test_generation_stops_after_the_eos_token_as_generate_does(model: nn.Module) -> None:
    ids, _ = prompts(batch=1, length=6, seed=1)
    reference = full_depth_greedy(model, ids, new=12)
    eos = int(reference[0, 6 + 4])  # the fifth new token
    first = 6 + (reference[0, 6:] == eos).nonzero()[0, 0]
    cache = DepthCache(model)
    out = speculative_generate(
        model, ids, draft_depth=2, lookahead=3, max_new_tokens=12, eos_token_id=eos, cache=cache
    )
    assert torch.equal(out.sequences, reference[:, : first + 1])
    assert cache.get_seq_length() == out.sequences.shape[1] - 1  # drafts after eos cropped
    assert torch.equal(out.sequences, full_depth_greedy(model, ids, new=12, eos_token_id=eos))


def test_a_block_left_unchanged_after_drafting(model: nn.Module) -> None:
    block = model.model.layers[1]
    ids, _ = prompts(batch=1, length=4)
    speculative_generate(model, ids, draft_depth=1, lookahead=2, max_new_tokens=4)
    assert block.eval_depth == DEPTH
    with pytest.raises(ValueError, match="lookahead"):
        speculative_generate(model, ids, draft_depth=1, lookahead=0, max_new_tokens=4)
    assert block.eval_depth == DEPTH


# The sampled path: the joint distribution of the first two new tokens, on a vocabulary of
# 4 (16 outcomes), against the exact full-depth distribution computed from the model.
SAMPLES = 2000
# The chi-square test's false-alarm probability: a correct implementation fails it with
# probability 1e-6 for a random seed; the seed below is fixed, so the test is repeatable.
ALPHA = 1e-6


def sampling_model() -> nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(7)
    config = llama_config(vocab_size=4, initializer_range=0.6, pad_token_id=None)
    config.bos_token_id = config.eos_token_id = None
    model = LlamaForCausalLM(config)
    model.model.layers[1] = RepeatedBlock(model.model.layers[1], eval_depth=DEPTH)
    return model.eval()


def full_depth_joint(model: nn.Module, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    with torch.no_grad():
        first = torch.softmax(model(input_ids=ids, use_cache=False).logits[0, -1] / temperature, -1)
        joint = torch.zeros(4, 4, dtype=torch.float64)
        for token in range(4):
            extended = torch.cat([ids, torch.tensor([[token]])], dim=1)
            logits = model(input_ids=extended, use_cache=False).logits[0, -1]
            joint[token] = first[token].double() * torch.softmax(logits / temperature, -1).double()
    return joint.flatten()


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected >= 5  # merge the rare outcomes into one cell
    observed = torch.cat([counts[keep], counts[~keep].sum().reshape(1)])
    expected = torch.cat([expected[keep], expected[~keep].sum().reshape(1)])
    if expected[-1] < 5:
        observed, expected = observed[:-1], expected[:-1]
        observed[-1] += counts[~keep].sum()
        expected[-1] += probs[~keep].sum() * counts.sum()
    statistic = ((observed - expected) ** 2 / expected).sum()
    freedom = torch.tensor(len(expected) - 1, dtype=torch.float64)
    return float(torch.special.gammaincc(freedom / 2, statistic / 2))


def test_sampling_gives_the_full_depth_distribution() -> None:
    model = sampling_model()
    ids = torch.tensor([[1, 3, 0, 2, 1]])
    temperature = 0.7
    probs = full_depth_joint(model, ids, temperature)
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(16, dtype=torch.float64)
    drafted = accepted = 0
    for _ in range(SAMPLES):
        out = speculative_generate(
            model,
            ids,
            draft_depth=1,
            lookahead=2,
            max_new_tokens=3,
            do_sample=True,
            temperature=temperature,
            generator=generator,
        )
        a, b = out.sequences[0, 5:7].tolist()
        counts[4 * a + b] += 1
        drafted, accepted = drafted + out.drafted, accepted + out.accepted
    # Both paths ran: acceptances and rejections (the residual distribution's samples).
    assert 0.2 < accepted / drafted < 0.95
    assert chi_square_p_value(counts, probs) > ALPHA
    # The test can fail: the draft depth's own distribution is rejected.
    draft_probs = torch.zeros(16, dtype=torch.float64)
    block = model.model.layers[1]
    block.eval_depth = 1
    try:
        draft_probs = full_depth_joint(model, ids, temperature)
    finally:
        block.eval_depth = DEPTH
    assert chi_square_p_value(counts, draft_probs) < ALPHA


def test_bad_arguments_are_refused_clearly(model: nn.Module) -> None:
    ids, _ = prompts(batch=1, length=4)
    options = {"draft_depth": 1, "lookahead": 2, "max_new_tokens": 4}
    with pytest.raises(ValueError, match=r"shape \(1, length\).*got shape \(2, 4\)"):
        speculative_generate(model, prompts(batch=2, length=4)[0], **options)
    with pytest.raises(TypeError, match="input_ids must be an int64 tensor"):
        speculative_generate(model, ids.float(), **options)
    with pytest.raises(ValueError, match=r"draft_depth must be at most .* \(4\), got 5"):
        speculative_generate(model, ids, draft_depth=5, lookahead=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        speculative_generate(model, ids, draft_depth=1, lookahead=2, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature must be a float > 0, got 0"):
        speculative_generate(model, ids, **options, do_sample=True, temperature=0)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        speculative_generate("model", ids, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holds none"):
        speculative_generate(nn.Linear(2, 2).eval(), ids, **options)
    with pytest.raises(ValueError, match="policy='exact'"):
        speculative_generate(model, ids, **options, cache=DepthCache(model, policy="last"))
    model.train()
    try:
        with pytest.raises(ValueError, match=r"eval mode \(model.eval\(\)\)"):
            speculative_generate(model, ids, **options)
    finally:
        model.eval()


@pytest.mark.parametrize("tolerance", [0.2, 0.4])
def test_per_token_exit_at_verification_gives_the_tokens_without_a_cache(tolerance: float) -> None:
    # Each verified position stops at its own depth, as a token a step would: causal
    # attention keeps the later drafts from changing an earlier position's states.
    policy = ExitWhenConverged(tolerance, max_depth=8)
    model = repeated_llama(DEPTH, per_token=True, eval_depth=policy)
    for seed in (1, 2):
        ids, _ = prompts(batch=1, length=6, seed=seed)
        reference = greedy(model, ids, torch.ones_like(ids), new=12, use_cache=False).sequences
        for draft_depth in (1, 2, 4, 8):
            for lookahead in (1, 3, 5):
                out = speculative_generate(
                    model, ids, draft_depth=draft_depth, lookahead=lookahead, max_new_tokens=12
                )
                assert torch.equal(out.sequences, reference), (seed, draft_depth, lookahead)


def test_exit_without_per_token_is_refused_clearly() -> None:
    model = repeated_llama(DEPTH, eval_depth=ExitWhenConverged(0.2, max_depth=8))
    ids, _ = prompts(batch=1, length=4)
    with pytest.raises(ValueError, match=r"ExitWhenConverged only with per_token=True"):
        speculative_generate(model, ids, draft_depth=1, lookahead=2, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"eval_depth to be an int .* got 'max'"):
        speculative_generate(
            repeated_llama(DEPTH, eval_depth="max"),
            ids,
            draft_depth=1,
            lookahead=2,
            max_new_tokens=4,
        )


def test_the_docstring_example_runs() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(speculative_generate, "speculative_generate", globs={})
    assert sum(len(test.examples) for test in tests) >= 5
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_accepted_drafts_after_an_eos_token_are_dropped_with_their_cache_entries() -> None:
    model = identity_repeats_model()  # every draft accepted: eos lands inside a round
    ids, _ = prompts(batch=1, length=5, seed=4)
    reference = full_depth_greedy(model, ids, new=16)
    eos = int(reference[0, 5 + 2])  # the third new token, drafted in the first round
    first = 5 + int((reference[0, 5:] == eos).nonzero()[0, 0])
    cache = DepthCache(model)
    out = speculative_generate(
        model, ids, draft_depth=1, lookahead=4, max_new_tokens=16, eos_token_id=eos, cache=cache
    )
    assert torch.equal(out.sequences, reference[:, : first + 1])
    assert cache.get_seq_length() == out.sequences.shape[1] - 1
