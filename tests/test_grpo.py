"""The TRL GRPO baseline: rollouts come from the project's sampler with tool output marked as
environment tokens, and training on an enumerable problem moves the exact probability of rewarded
sequences up."""

import math

from gfnlm.baselines.grpo import GrpoSettings, rollout_function, train_grpo
from gfnlm.core.action_space import ActionSpace
from gfnlm.core.task import Task, TaskPrompt
from gfnlm.inference.exact import policy_distribution
from gfnlm.model.policy import LoraSettings, Policy
from tests.conftest import char_tokenizer, tiny_llama

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


def test_grpo_raises_the_probability_of_rewarded_sequences():
    tok = char_tokenizer(CHARS)
    task = LetterTask(tok)
    policy = Policy(tiny_llama(len(tok), seed=2, init=0.3), tok, LoraSettings(r=8, alpha=16))
    b = task.ids["b"]

    def rewarded_mass():
        dist = policy_distribution(policy.model, task.space, (task.ids["p"],))
        return sum(math.exp(lp) for z, lp in dist.items() if z[:1] == (b,))

    before = rewarded_mass()
    rows = train_grpo(policy, task, lambda key, z: float(z[:1] == [b]),
                      GrpoSettings(steps=40, trajectories_per_prompt=16, lr=2e-2, progress=False))
    after = rewarded_mass()
    assert before < 0.5 and after > 0.9, (before, after)
    assert len(rows) == 40 and sum(r["reward_calls"] for r in rows) == 40 * 16
    assert rows[-1]["reward"] > rows[0]["reward"]
    assert not policy.model.training
