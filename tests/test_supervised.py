"""Supervised fine-tuning through TRL: imitated tokens become likely, environment-written ones are not learned."""

import pytest
import torch

from gfnlm.baselines.sft import SupervisedExample, SupervisedSettings, supervised_finetune
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import LoraSettings, Policy
from tests.conftest import char_tokenizer, tiny_llama


def target_log_probs(policy, prompt, target):
    ids = torch.tensor([list(prompt) + list(target)])
    with torch.no_grad():
        lp = torch.log_softmax(policy.model(input_ids=ids).logits[0].float(), -1)
    return [float(lp[len(prompt) + j - 1, t]) for j, t in enumerate(target)]


def base_and_policy_logits(policy, batch):
    """The logits of the shared base model (adapter off) and of the policy (adapter on) on ``batch``."""
    with torch.no_grad():
        with policy.base():
            base = policy.model(input_ids=batch).logits
        return base, policy.model(input_ids=batch).logits


def trained_policy(trained):
    tok = char_tokenizer()
    policy = Policy(tiny_llama(len(tok), seed=3), tok, LoraSettings(r=8, alpha=16))
    prompt, target = tok.encode("Q:"), tok.encode("7+2=9\n")
    before = target_log_probs(policy, prompt, target)
    stats = supervised_finetune(policy, [SupervisedExample(prompt, target, trained)],
                                SupervisedSettings(epochs=60, lr=1e-2, batch_size=1, progress=False))
    return before, target_log_probs(policy, prompt, target), stats, policy


def test_imitated_tokens_become_likely_and_tool_output_is_not_learned():
    mask = [True, True, True, True, False, True]  # "9" is written by the calculator
    before, after, stats, policy = trained_policy(mask)
    assert stats["steps"] == 60 and stats["loss"] < 1.0
    assert not policy.model.training
    for j, keep in enumerate(mask):
        if keep:
            assert after[j] > -0.3 > before[j]
    _, all_trained, _, _ = trained_policy(None)
    assert all_trained[4] > -0.3 and after[4] < all_trained[4] - 1.0


def test_training_changes_the_adapter_and_leaves_the_base_model_bit_for_bit():
    tok = char_tokenizer()
    policy = Policy(tiny_llama(len(tok), seed=3), tok, LoraSettings(r=8, alpha=16))
    batch = torch.tensor([tok.encode("Q:7+2=9\n"), tok.encode("A: ab?c=")])
    base_before, policy_before = base_and_policy_logits(policy, batch)
    supervised_finetune(policy, [SupervisedExample(tok.encode("Q:"), tok.encode("7+2=9\n"))],
                        SupervisedSettings(epochs=2, lr=1e-2, batch_size=1, progress=False))
    base_after, policy_after = base_and_policy_logits(policy, batch)
    assert torch.equal(base_after, base_before)
    assert (policy_after - policy_before).abs().max() > 1e-2


def test_bad_examples_are_refused_before_training():
    tok = char_tokenizer()
    policy = Policy(tiny_llama(len(tok)), tok, LoraSettings(r=2, alpha=4))
    with pytest.raises(GfnlmError, match="at least one example"):
        supervised_finetune(policy, [])
    with pytest.raises(GfnlmError, match="one flag per token"):
        supervised_finetune(policy, [SupervisedExample([1], [2, 3], [False, False])])


def test_early_stopping_restores_the_epoch_with_the_best_held_out_loss():
    tok = char_tokenizer()
    policy = Policy(tiny_llama(len(tok), seed=3), tok, LoraSettings(r=8, alpha=16))
    prompt = tok.encode("Q:")
    held_target = tok.encode("ba\n")  # conflicts with what is trained: its loss must rise at some point
    stats = supervised_finetune(policy, [SupervisedExample(prompt, tok.encode("ab\n"))],
                                SupervisedSettings(epochs=40, lr=1e-2, batch_size=1, progress=False),
                                validation=[SupervisedExample(prompt, held_target)], patience=3)
    losses = stats["validation_losses"]
    best = losses.index(min(losses)) + 1
    assert stats["best_epoch"] == best and len(losses) == best + 3 < 40  # stopped 3 epochs after the best
    assert losses[-1] > min(losses)
    restored = -sum(target_log_probs(policy, prompt, held_target)) / len(held_target)
    assert abs(restored - min(losses)) < 1e-4  # the adapter is back at its best epoch
    assert not policy.model.training
