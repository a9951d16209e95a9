"""The TRL GRPO baseline: rollouts come from the project's sampler with tool output marked as
environment tokens, which get no gradient from TRL's loss; training on an enumerable problem moves the
exact probability of rewarded sequences up and leaves the shared base model as it was."""

import math

import pytest
import torch

from gfnlm.baselines import grpo
from gfnlm.baselines.grpo import GrpoSettings, rollout_function, train_grpo
from gfnlm.core.action_space import ActionSpace
from gfnlm.core.task import Task, TaskPrompt
from gfnlm.inference.exact import policy_distribution
from gfnlm.model.policy import LoraSettings, Policy
from gfnlm.targets.base import Target
from tests.conftest import char_tokenizer, tiny_llama
from tests.test_supervised import base_and_policy_logits

CHARS = "abcdep"  # a..d are actions, e stops, p is the prompt


class LetterTask(Task):
    name = "letters"
    Config = dict

    def __init__(self, tokenizer, tool=False):
        super().__init__({})
        self.tok = tokenizer
        ids = {c: tokenizer.convert_tokens_to_ids(c) for c in CHARS}
        self.ids = ids
        self.space = ActionSpace(len(tokenizer), [ids["e"]], min_len=1, max_len=2,
                                 allowed_tokens=[ids[c] for c in "abcd"])
        self.tool = tool

    def setup(self, tokenizer, vocab_size):
        pass

    def train_prompts(self):
        return [TaskPrompt("p", (self.ids["p"],), "p")]

    def action_space(self):
        return self.space

    def insert_hook(self):
        if not self.tool:
            return None
        return lambda row, stream: [self.ids["c"], self.ids["c"]] if stream[-1] == self.ids["a"] else []

    def target(self, policy):
        raise NotImplementedError


def test_rollouts_mark_tool_output_as_environment_tokens():
    tok = char_tokenizer(CHARS)
    task = LetterTask(tok, tool=True)
    policy = Policy(tiny_llama(len(tok), seed=3, init=0.5), tok, LoraSettings(r=4, alpha=8))
    out = rollout_function(policy, task, seed=0)(["p"] * 64, None)
    assert len(out["completion_ids"]) == 64 and out["prompt_key"] == ["p"] * 64
    a, c, e = (task.ids[x] for x in "ace")
    tools = 0
    for ids, mask, latent in zip(out["completion_ids"], out["env_mask"], out["latent"]):
        assert ids == latent + [e]
        want, k = [], 0
        while k < len(latent):  # every policy "a" is followed by the tool's "c c", which are not actions
            want.append(1)
            if latent[k] == a and k + 2 < len(latent) + 1:
                assert latent[k + 1: k + 3] == [c, c]
                want += [0, 0]
                k += 2
                tools += 1
            k += 1
        assert mask == want + [1]
    assert tools > 0


class StartsWith(Target):
    """log R = 0 for a row whose first token is ``token``, -5 otherwise (every prefix scored alike)."""

    def __init__(self, token):
        self.token = token

    def log_rewards(self, traj):
        hit = (traj.tokens[:, 0] == self.token) & (traj.lengths > 0)
        return torch.where(hit, 0.0, -5.0)[:, None].expand(-1, traj.tokens.shape[1] + 1)


def test_rollouts_carry_the_target_log_reward_of_each_trajectory():
    tok = char_tokenizer(CHARS)
    task = LetterTask(tok)
    policy = Policy(tiny_llama(len(tok), seed=2, init=0.3), tok, LoraSettings(r=4, alpha=8))
    d = task.ids["d"]  # the first token of most rollouts, not all
    out = rollout_function(policy, task, 0, 1.0, StartsWith(d))(["p"] * 64, None)
    assert out["log_reward"] == [0.0 if z[:1] == [d] else -5.0 for z in out["latent"]]
    assert set(out["log_reward"]) == {0.0, -5.0}


@pytest.mark.parametrize("reward", ["function", "target"])
def test_grpo_raises_the_probability_of_rewarded_sequences(reward):
    tok = char_tokenizer(CHARS)
    task = LetterTask(tok)
    policy = Policy(tiny_llama(len(tok), seed=2, init=0.3), tok, LoraSettings(r=8, alpha=16))
    b = task.ids["b"]
    # the same preference as a 0/1 function of the tokens or as a target's log-reward
    reward = (lambda key, z: float(z[:1] == [b])) if reward == "function" else StartsWith(b)

    def rewarded_mass():
        dist = policy_distribution(policy.model, task.space, (task.ids["p"],))
        return sum(math.exp(lp) for z, lp in dist.items() if z[:1] == (b,))

    before = rewarded_mass()
    rows = train_grpo(policy, task, reward, GrpoSettings(steps=40, trajectories_per_prompt=16, lr=2e-2, progress=False))
    after = rewarded_mass()
    assert before < 0.5 and after > 0.9, (before, after)
    assert len(rows) == 40 and sum(r["reward_calls"] for r in rows) == 40 * 16
    assert rows[-1]["reward"] > rows[0]["reward"]
    assert not policy.model.training


def test_training_changes_the_adapter_and_leaves_the_base_model_bit_for_bit():
    tok = char_tokenizer(CHARS)
    task = LetterTask(tok, tool=True)
    policy = Policy(tiny_llama(len(tok), seed=3, init=0.5), tok, LoraSettings(r=4, alpha=8))
    a, b, c, d, e, p = (task.ids[x] for x in CHARS)
    batch = torch.tensor([[p, a, c, c, b, e], [p, d, b, e, a, c]])
    base_before, policy_before = base_and_policy_logits(policy, batch)
    train_grpo(policy, task, lambda key, z: float(a in z),
               GrpoSettings(steps=2, trajectories_per_prompt=8, lr=2e-2, progress=False))
    base_after, policy_after = base_and_policy_logits(policy, batch)
    assert torch.equal(base_after, base_before)
    assert (policy_after - policy_before).abs().max() > 1e-2


def grpo_loss_gradients(monkeypatch, with_env_mask: bool) -> list[tuple[list[int], float, torch.Tensor]]:
    """One GRPO step on the tool task through ``train_grpo``; per completion in TRL's loss: its env_mask as
    the rollout wrote it, its advantage, and the gradient of the loss w.r.t. the hidden state that the LM head
    turns into each completion token's logits (TRL's fused head never materializes the logits). Without
    ``with_env_mask`` the rollouts reach TRL with the mask removed."""
    from trl import GRPOTrainer

    tok = char_tokenizer(CHARS)
    task = LetterTask(tok, tool=True)
    policy = Policy(tiny_llama(len(tok), seed=3, init=0.5), tok, LoraSettings(r=4, alpha=8))
    written: dict[tuple, list[int]] = {}  # completion -> env_mask from the rollout
    losses, gradients = [], []
    real_rollout, real_loss = grpo.rollout_function, GRPOTrainer._compute_loss

    def recording_rollout(*args):
        rollout = real_rollout(*args)

        def run(prompts, trainer):
            out = rollout(prompts, trainer)
            written.update(zip(map(tuple, out["completion_ids"]), out["env_mask"]))
            if not with_env_mask:
                del out["env_mask"]
            return out

        return run

    def recording_loss(self, model, inputs):
        losses.append(inputs)
        return real_loss(self, model, inputs)

    def keep_gradient(_module, _inputs, hidden):
        if hidden.requires_grad:  # the loss's forward, not the rollouts' or scoring's
            hidden.register_hook(gradients.append)

    with monkeypatch.context() as patch:
        patch.setattr(grpo, "rollout_function", recording_rollout)
        patch.setattr(GRPOTrainer, "_compute_loss", recording_loss)
        handle = policy.model.get_base_model().model.norm.register_forward_hook(keep_gradient)
        try:
            train_grpo(policy, task, lambda key, z: float(task.ids["a"] in z),
                       GrpoSettings(steps=1, trajectories_per_prompt=8, progress=False))
        finally:
            handle.remove()
    assert len(losses) == len(gradients) == 1
    inputs, gradient = losses[0], gradients[0]
    assert ("tool_mask" in inputs) == with_env_mask
    first = inputs["prompt_ids"].shape[1] - 1  # the hidden row that predicts the first completion token
    rows = []
    for ids, mask, advantage, grad in zip(inputs["completion_ids"], inputs["completion_mask"],
                                          inputs["advantages"], gradient):
        completion = ids[mask.bool()].tolist()
        rows.append((written[tuple(completion)], float(advantage), grad[first: first + len(completion)]))
    return rows


def test_tool_output_gets_no_gradient_from_the_grpo_loss(monkeypatch):
    tool_tokens = 0
    for env_mask, advantage, grad in grpo_loss_gradients(monkeypatch, with_env_mask=True):
        for mask, token_grad in zip(env_mask, grad):
            if mask == 0:
                assert torch.count_nonzero(token_grad) == 0
            elif advantage != 0:
                assert torch.count_nonzero(token_grad) > 0
        tool_tokens += env_mask.count(0) if advantage != 0 else 0
    assert tool_tokens > 0
    # control: without the mask the same tokens are trained
    for env_mask, advantage, grad in grpo_loss_gradients(monkeypatch, with_env_mask=False):
        for mask, token_grad in zip(env_mask, grad):
            assert (torch.count_nonzero(token_grad) > 0) == (advantage != 0)
