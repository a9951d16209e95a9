"""One temperature-conditional policy reaches the exact tempered target at every trained temperature. It reads T
as a learned embedding, with learned factors on its logits, on its stop token's logit and on its LoRA output:
all start at the identity (the unconditional policy) and are seen by the policy alone."""

import math
import random

import pytest
import torch

from gfnlm.core.config import TrainConfig
from gfnlm.core.trainer import Trainer
from gfnlm.inference.exact import normalize, policy_distribution, target_distribution, total_variation
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import EMBEDDING_PREFIX, LoraSettings, Policy
from gfnlm.model.temperature import EMBEDDING_LR_SCALE, SCALAR_LR_SCALE, TemperatureConditioning, parse_temperatures
from tests.conftest import tiny_llama
from tests.test_enumerable_training import PROMPT, VOCAB, EnumerableTask

STOP = EnumerableTask().space.terminator[0]


def policy_with_lora(conditional: bool, r: int = 4, moved: bool = True):
    """A tiny policy whose LoRA already moved away from the base model (B = 0 at the start), with or without
    the temperature embedding over 0.5..1.0."""
    policy = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=r, alpha=2 * r))
    if moved:
        with torch.no_grad():
            for n, p in policy.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.3)
    return policy, policy.add_temperature_embedding(0.5, 1.0, STOP) if conditional else None


def logits(policy, ids=((2, 1, 0, 2),)):
    with torch.no_grad():
        return policy.model(input_ids=torch.tensor(ids)).logits


def test_parse_and_check_temperatures():
    assert parse_temperatures("0.7:1.0") == ("range", (0.7, 1.0))
    assert parse_temperatures("0.5, 1") == ("values", (0.5, 1.0))
    for bad in ("1.0:0.7", "a,b", "0,1", "0.5:0.6:0.7", "nan"):
        with pytest.raises(GfnlmError):
            parse_temperatures(bad)
    cond = TemperatureConditioning("0.7:1.0")
    assert cond.covers(0.8) and cond.covers(1.0) and not cond.covers(0.6)
    with pytest.raises(GfnlmError, match="not 1.2"):
        cond.check(1.2)
    values = TemperatureConditioning("0.5,1")
    assert values.covers(0.5) and not values.covers(0.75)
    with pytest.raises(GfnlmError, match="log_z: batch"):
        TrainConfig(conditional_temperatures="0.5,1.0").validate()


@pytest.mark.slow
def test_one_policy_learns_the_target_at_each_temperature(tmp_path):
    task = EnumerableTask()
    policy, _ = policy_with_lora(True, r=8, moved=False)
    config = TrainConfig(objective="subtb", log_z="batch", conditional_temperatures="0.5,1.0", steps=800,
                         trajectories_per_prompt=32, lr=1e-2, warmup_steps=0, lr_schedule="cosine", replay_prob=0.25,
                         tempered_prob=0.25, epsilon=0.05, buffer_capacity=64, buffer_tolerance=0.0,
                         max_grad_norm=0.0, checkpoint_every=10_000, progress=False, output_dir=str(tmp_path))
    config.validate()
    rows = Trainer(config, task, policy, tmp_path).train()
    assert {round(r["reward_temperature"], 2) for r in rows} >= {0.5, 1.0}
    conditioning = TemperatureConditioning(config.conditional_temperatures)
    learned = {}
    for t in (0.5, 1.0):
        with conditioning.at(policy, t):
            learned[t] = normalize(policy_distribution(policy.model, task.space, PROMPT))
        target = target_distribution(list(learned[t]), task.log_reward, t)
        assert total_variation(learned[t], target) < 0.06, t
    # T matters: the two learned distributions are as far apart as the two targets
    targets = [target_distribution(list(learned[t]), task.log_reward, t) for t in (0.5, 1.0)]
    assert total_variation(learned[0.5], learned[1.0]) > 0.5 * total_variation(*targets)


def test_temperature_embedding_is_read_by_the_policy_alone(tmp_path):
    policy, embedding = policy_with_lora(True)
    unconditional, _ = policy_with_lora(False)
    conditioning = TemperatureConditioning("0.5:1.0")
    assert embedding.position(0.5) == pytest.approx(1.0) and embedding.position(1.0) == pytest.approx(-1.0)
    assert embedding.position(0.75) == pytest.approx(-1 / 3)  # linear in 1/T
    plain = logits(policy)
    assert torch.equal(plain, logits(unconditional))
    for t in (0.5, 0.75, 1.0):
        with conditioning.at(policy, t):  # every parameter zero at the start: the unconditional policy
            assert torch.equal(logits(policy), plain)
    with torch.no_grad():
        embedding.weight.normal_()
    with policy.base():
        base = logits(policy)
    policy.add_adapter("other")
    with policy.adapter("other"):
        other = logits(policy)
    by_temperature = {}
    for t in (0.5, 0.75, 1.0):
        with conditioning.at(policy, t):
            by_temperature[t] = logits(policy)
            with policy.base():  # the reward model never reads T
                assert torch.equal(logits(policy), base)
            with policy.adapter("other"):
                assert torch.equal(logits(policy), other)
        assert not torch.allclose(by_temperature[t], plain)
    assert torch.equal(logits(policy), plain)  # unset after the block
    assert not torch.allclose(by_temperature[0.5], by_temperature[1.0])
    assert any(p is embedding.weight for p in policy.trainable_parameters())

    policy.save_adapter(tmp_path / "a.safetensors")
    again, _ = policy_with_lora(True, moved=False)
    again.load_adapter(tmp_path / "a.safetensors")
    with conditioning.at(again, 0.75):
        assert torch.equal(logits(again), by_temperature[0.75])
    bare, _ = policy_with_lora(False)
    with pytest.raises(GfnlmError, match="has a temperature embedding and this policy lacks"):
        bare.load_adapter(tmp_path / "a.safetensors")
    bare.save_adapter(tmp_path / "b.safetensors")
    with pytest.raises(GfnlmError, match="lacks a temperature embedding and this policy has"):
        again.load_adapter(tmp_path / "b.safetensors")
    other_parameters = policy.adapter_state()
    del other_parameters[EMBEDDING_PREFIX + "adapter_scale"]
    with pytest.raises(GfnlmError, match="does not fit this policy"):
        again.set_adapter_state(other_parameters)
    with pytest.raises(GfnlmError, match="has none"), conditioning.at(bare, 0.75):
        pass
    with pytest.raises(GfnlmError, match="not 1.5"), conditioning.at(policy, 1.5):
        pass
    with pytest.raises(GfnlmError, match="outside the vocabulary"):
        Policy(tiny_llama(VOCAB, seed=0), None, LoraSettings(r=4, alpha=8)).add_temperature_embedding(0.5, 1.0, VOCAB)


def test_the_factors_act_on_the_logits_the_stop_logit_and_every_lora_layer_of_the_policy_alone(tmp_path):
    """At T the policy computes exp(u + x(T) v) times the logits of the same policy with every LoRA B matrix
    multiplied by exp(g0 + x(T) g1), plus x(T) w on the stop token's logit (each LoRA layer adds B A x times
    its scaling, so scaling B is scaling its output). The base model is unchanged; every scalar gets a gradient
    and is saved with the adapter."""
    policy, embedding = policy_with_lora(True)
    reference, _ = policy_with_lora(False)
    conditioning = TemperatureConditioning("0.5:1.0")
    with torch.no_grad():
        embedding.logit_scale.copy_(torch.tensor([0.2, 0.1]))
        embedding.stop_slope.copy_(torch.tensor([1.5]))
        embedding.adapter_scale.copy_(torch.tensor([-0.4, 0.6]))
    with policy.base():
        base = logits(policy)
    lora_b = [p for n, p in reference.model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 2 * 7  # every linear layer of both transformer layers
    unscaled = [p.detach().clone() for p in lora_b]
    others = [i for i in range(VOCAB) if i != STOP]
    for t in (0.5, 0.75, 1.0):
        x = embedding.position(t)
        with torch.no_grad():
            for p, b in zip(lora_b, unscaled):
                p.copy_(b * math.exp(-0.4 + 0.6 * x))
        expected = logits(reference) * math.exp(0.2 + 0.1 * x)
        with conditioning.at(policy, t):
            got = logits(policy)
            assert torch.allclose(got[..., others], expected[..., others], atol=1e-5)
            assert torch.allclose(got[..., STOP], expected[..., STOP] + 1.5 * x, atol=1e-5)
            with policy.base():
                assert torch.equal(logits(policy), base)
    with conditioning.at(policy, 0.6):
        policy.model(input_ids=torch.tensor([[2, 1, 0, 2]])).logits.sum().backward()
    for parameter in embedding.scalar_parameters():
        assert parameter.grad is not None and (parameter.grad != 0).all()
        assert any(p is parameter for p in policy.trainable_parameters())
    policy.save_adapter(tmp_path / "a.safetensors")
    again, _ = policy_with_lora(True, moved=False)
    again.load_adapter(tmp_path / "a.safetensors")
    with conditioning.at(again, 0.75), conditioning.at(policy, 0.75):
        assert torch.equal(logits(again), logits(policy))


def test_range_draws_favour_the_ends():
    cond = TemperatureConditioning("0.8:1.0")
    rng = random.Random(0)
    draws = [cond.draw(rng) for _ in range(4000)]
    assert all(0.8 <= t <= 1.0 for t in draws) and len(set(draws)) > 15
    outer = sum(t <= 0.82 or t >= 0.98 for t in draws) / len(draws)
    assert 0.33 < outer < 0.5  # Beta(1/2, 1/2) puts 41% of the mass in the outer fifth (uniform: 20%)


def test_the_embedding_and_the_scalars_have_their_own_learning_rates(tmp_path):
    """Adam's first step moves every parameter with a gradient by its group's lr: e(T) by lr x EMBEDDING_LR_SCALE,
    the logit factor and the stop offset by lr x SCALAR_LR_SCALE. The LoRA factor (no gradient while B = 0) is in
    their group."""
    task = EnumerableTask()
    policy, embedding = policy_with_lora(True, moved=False)
    lr = 1e-3
    config = TrainConfig(objective="subtb", log_z="batch", conditional_temperatures="0.5,1.0", steps=1, lr=lr,
                         warmup_steps=0, lr_schedule="constant", max_grad_norm=0.0, checkpoint_every=10_000,
                         progress=False, output_dir=str(tmp_path))
    config.validate()
    lora_b = [p for n, p in policy.model.named_parameters() if "lora_B" in n]
    before = [p.detach().clone() for p in lora_b]
    trainer = Trainer(config, task, policy, tmp_path)
    trainer.train()
    scalar_group = [g for g in trainer.optimizer.param_groups if g["lr"] == pytest.approx(lr * SCALAR_LR_SCALE)]
    assert len(scalar_group) == 1
    assert all(any(p is q for q in scalar_group[0]["params"]) for p in embedding.scalar_parameters())
    assert embedding.weight.detach().abs().max().item() == pytest.approx(lr * EMBEDDING_LR_SCALE, rel=1e-3)
    assert embedding.logit_scale.detach().abs().max().item() == pytest.approx(lr * SCALAR_LR_SCALE, rel=1e-3)
    assert embedding.stop_slope.detach().abs().max().item() == pytest.approx(lr * SCALAR_LR_SCALE, rel=1e-3)
    lora_moved = max((p.detach() - b).abs().max().item() for p, b in zip(lora_b, before))
    assert lora_moved == pytest.approx(lr, rel=1e-3)
