"""Gradient checkpointing: the same loss and gradients (the loss pass runs after a shared prompt
cache, with packed copies of a multi-token terminator), fewer saved activations, layers run twice."""

import torch

from gfnlm.core.action_space import ActionSpace
from gfnlm.core.objectives import BalanceTerms, balance_loss
from gfnlm.core.policy_scores import score_policy
from gfnlm.core.sampler import sample_trajectories
from gfnlm.model.grad_checkpointing import enable_gradient_checkpointing
from gfnlm.model.policy import LoraSettings, Policy
from tests.conftest import tiny_llama
from tests.test_enumerable_training import EnumerableTask, make_trainer

V = 12


def counted(forward, calls):
    def run(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    return run


def loss_and_grads(policy, space, traj, rewards):
    for p in policy.trainable_parameters():
        p.grad = None
    saved_bytes = 0

    def pack(t):  # activations kept for the backward pass outside checkpointed regions
        nonlocal saved_bytes
        saved_bytes += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scores = score_policy(policy.model, space, traj)
        terms = BalanceTerms(scores.log_pf, scores.log_stop, rewards, scores.terminable, traj.lengths)
        loss = balance_loss("subtb", terms)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in policy.trainable_parameters()], saved_bytes


def test_checkpointed_loss_pass_gives_the_same_gradients_with_less_saved():
    policy = Policy(tiny_llama(V, seed=3, init=0.3), None, LoraSettings(r=4, alpha=8), seed=1)
    with torch.no_grad():  # non-zero LoRA B, so every LoRA matrix gets a gradient
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    space = ActionSpace(V, [10, 11], min_len=1, max_len=5, banned_tokens=[9])
    generator = torch.Generator().manual_seed(0)
    traj = sample_trajectories(policy.model, space, [(9, 1, 2), (9, 3)], ["a", "b"], torch.tensor([0, 0, 1, 1, 1]),
                               generator=generator)
    rewards = torch.randn(traj.batch_size, traj.max_length + 1, generator=generator)

    calls = []
    for layer in policy.model.base_model.model.model.layers:  # count MLP runs (module hooks skip replays)
        layer.mlp.forward = counted(layer.mlp.forward, calls)
    loss, grads, saved = loss_and_grads(policy, space, traj, rewards)
    plain_calls = len(calls)
    assert enable_gradient_checkpointing(policy.model) == 2
    calls.clear()
    loss_ckpt, grads_ckpt, saved_ckpt = loss_and_grads(policy, space, traj, rewards)
    assert len(calls) == 2 * plain_calls  # each layer ran again in the backward pass
    assert abs(loss - loss_ckpt) < 1e-6
    for g, h in zip(grads, grads_ckpt):
        assert g.abs().max() > 0 and torch.allclose(g, h, atol=1e-6, rtol=1e-5)
    assert saved_ckpt < saved / 2

    calls.clear()  # without gradients (sampling, rewards) nothing is checkpointed or replayed
    with torch.no_grad():
        score_policy(policy.model, space, traj)
    assert len(calls) == plain_calls


def test_training_with_checkpointing_reaches_the_same_parameters(tmp_path):
    plain = make_trainer(tmp_path / "plain", "subtb", EnumerableTask(terminator=(3, 4), min_len=1), steps=5)
    ckpt = make_trainer(tmp_path / "ckpt", "subtb", EnumerableTask(terminator=(3, 4), min_len=1), steps=5)
    enable_gradient_checkpointing(ckpt.policy.model)
    plain.train()
    ckpt.train()
    for a, b in zip(plain.policy.trainable_parameters(), ckpt.policy.trainable_parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert any(not torch.equal(a, torch.zeros_like(a)) for a in plain.policy.trainable_parameters())
