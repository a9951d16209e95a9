"""One temperature-conditional policy reaches the exact tempered target at every trained temperature."""

import pytest

from gfnlm.conditioning import TemperatureConditioning, parse_temperatures
from gfnlm.config import TrainConfig
from gfnlm.errors import GfnlmError
from gfnlm.evaluation.exact import normalize, policy_distribution, target_distribution, total_variation
from gfnlm.policy import LoraSettings, Policy
from gfnlm.trainer import Trainer
from tests.conftest import tiny_llama
from tests.test_enumerable_training import PROMPT, VOCAB, EnumerableTask

TAGS = {0.5: (0,), 1.0: (1,)}  # the tiny vocabulary has no text: T is one token before the prompt


class ConditionalTask(EnumerableTask):
    def temperature_tag(self):
        return lambda t: TAGS[t]


def test_parse_and_check_temperatures():
    assert parse_temperatures("0.7:1.0") == ("range", (0.7, 1.0))
    assert parse_temperatures("0.5, 1") == ("values", (0.5, 1.0))
    for bad in ("1.0:0.7", "a,b", "0,1", "0.5:0.6:0.7", "nan"):
        with pytest.raises(GfnlmError):
            parse_temperatures(bad)
    cond = TemperatureConditioning("0.7:1.0", lambda t: [9])
    assert cond.policy_prompt((3, 4), 0.8) == (9, 3, 4)
    with pytest.raises(GfnlmError, match="not 1.2"):
        cond.policy_prompt((3,), 1.2)
    with pytest.raises(GfnlmError, match="log_z: batch"):
        TrainConfig(conditional_temperatures="0.5,1.0").validate()


def test_one_policy_learns_the_target_at_each_temperature(tmp_path):
    task = ConditionalTask()
    policy = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=8, alpha=16))
    config = TrainConfig(objective="subtb", log_z="batch", conditional_temperatures="0.5,1.0", steps=800,
                         trajectories_per_prompt=32, lr=1e-2, warmup_steps=0, lr_schedule="cosine", replay_prob=0.25,
                         tempered_prob=0.25, epsilon=0.05, buffer_capacity=64, buffer_tolerance=0.0,
                         max_grad_norm=0.0, checkpoint_every=10_000, progress=False, output_dir=str(tmp_path))
    config.validate()
    rows = Trainer(config, task, policy, tmp_path).train()
    assert {round(r["reward_temperature"], 2) for r in rows} >= {0.5, 1.0}
    learned = {}
    for t, tag in TAGS.items():
        learned[t] = normalize(policy_distribution(policy.model, task.space, tag + PROMPT))
        target = target_distribution(list(learned[t]), task.log_reward, t)
        assert total_variation(learned[t], target) < 0.06, t
    # the tag matters: the two learned distributions are as far apart as the two targets
    targets = [target_distribution(list(learned[t]), task.log_reward, t) for t in TAGS]
    assert total_variation(learned[0.5], learned[1.0]) > 0.5 * total_variation(*targets)
