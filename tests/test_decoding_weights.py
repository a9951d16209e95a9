"""Decoding with the adapter folded into the weights: the same outputs, the base weights untouched."""

import pytest
import torch

from gfnlm.model.decoding_weights import decoding_weights, split_linear
from gfnlm.model.policy import LoraSettings, Policy
from tests.conftest import tiny_llama

V = 12


def trained_policy(seed: int = 0) -> Policy:
    policy = Policy(tiny_llama(V, seed=seed), None, LoraSettings(r=4, alpha=8))
    generator = torch.Generator().manual_seed(seed)
    for p in policy.trainable_parameters():  # a non-zero adapter, so folding it in matters
        p.data = torch.randn(p.shape, generator=generator) * 0.3
    return policy


@torch.no_grad()
def test_folded_decoding_matches_the_adapter_and_leaves_the_base_weights_bit_for_bit():
    policy = trained_policy()
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    expected = policy.model(input_ids=ids).logits
    with policy.base():
        expected_base = policy.model(input_ids=ids).logits
    with decoding_weights(policy.model):
        folded = policy.model(input_ids=ids).logits
    with policy.base(), decoding_weights(policy.model):
        folded_base = policy.model(input_ids=ids).logits
    assert not torch.allclose(expected, expected_base, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded_base, expected_base, atol=1e-5, rtol=1e-5)
    after = policy.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(policy.model(input_ids=ids).logits, expected)  # the layers run as before afterwards


@torch.no_grad()
def test_layers_with_hooks_on_the_adapter_are_not_folded():
    policy = trained_policy()
    policy.add_temperature_embedding(0.5, 2.0, stop_token=3)
    linear = next(m for m in policy.model.modules() if hasattr(m, "lora_A"))
    with decoding_weights(policy.model):
        assert "forward" not in vars(linear)  # runs as it is: the hooks read the adapter's output


@pytest.mark.parametrize("threads", [1, 2])
def test_split_linear_is_the_linear_map(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        w, b = torch.randn(48, 20, generator=generator), torch.randn(48, generator=generator)
        for shape in [(3, 20), (2, 1, 20), (40, 20)]:  # few rows (split) and many (plain)
            x = torch.randn(shape, generator=generator)
            torch.testing.assert_close(split_linear(x, w, b), torch.nn.functional.linear(x, w, b))
    finally:
        torch.set_num_threads(previous)


def test_the_sampler_draws_the_same_rollouts_on_folded_weights(monkeypatch):
    """Long rollouts run on folded weights; with the same random stream they are the unfolded rollouts."""
    import gfnlm.core.sampler as sampler
    from gfnlm.core.action_space import ActionSpace

    policy = trained_policy(seed=1)
    space = ActionSpace(V, [11], min_len=0, max_len=sampler.FOLD_MIN_STEPS + 4)

    def rollouts():
        return sampler.sample_trajectories(policy.model, space, [(1, 2)], ["p"], torch.zeros(32, dtype=torch.long),
                                           generator=torch.Generator().manual_seed(0))

    folded = rollouts()
    monkeypatch.setattr(sampler, "FOLD_MIN_STEPS", 10**6)
    unfolded = rollouts()
    assert torch.equal(folded.tokens, unfolded.tokens) and torch.equal(folded.lengths, unfolded.lengths)
    assert folded.lengths.float().mean() > 3  # long enough for the comparison to say something
