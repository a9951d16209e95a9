"""The RLOO baseline: leave-one-out advantages against a loop, and training on an enumerable problem
moves the exact probability of rewarded sequences up."""

import math

import pytest
import torch

from gfnlm.baselines.policy_gradient import PolicyGradientSettings, leave_one_out_advantages, train_rloo
from gfnlm.inference.exact import policy_distribution
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import LoraSettings, Policy
from tests.conftest import tiny_llama
from tests.test_enumerable_training import PROMPT, VOCAB, EnumerableTask


def test_leave_one_out_advantages_match_a_loop():
    r = torch.tensor([1.0, 0.0, 0.5, 3.0])
    want = [r[i] - sum(r[j] for j in range(4) if j != i) / 3 for i in range(4)]
    torch.testing.assert_close(leave_one_out_advantages(r), torch.stack(want))
    with pytest.raises(GfnlmError):
        leave_one_out_advantages(torch.tensor([1.0]))


def rewarded_mass(policy, task):
    dist = policy_distribution(policy.model, task.space, PROMPT)
    return sum(math.exp(lp) for z, lp in dist.items() if z[:1] == (2,))


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_rloo_raises_the_probability_of_rewarded_sequences(kl_coef):
    task = EnumerableTask(max_len=2)
    policy = Policy(tiny_llama(VOCAB, seed=2, init=0.3), None, LoraSettings(r=8, alpha=16))
    before = rewarded_mass(policy, task)
    rows = train_rloo(policy, task, lambda key, z: float(z[:1] == [2]),
                      PolicyGradientSettings(steps=60, trajectories_per_prompt=16, lr=1e-2, kl_coef=kl_coef,
                                             progress=False))
    after = rewarded_mass(policy, task)
    assert before < 0.5 and after > 0.9
    assert len(rows) == 60 and sum(r["reward_calls"] for r in rows) == 60 * 16
    assert rows[-1]["reward"] > rows[0]["reward"]
