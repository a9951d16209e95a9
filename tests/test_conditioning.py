"""One temperature-conditional policy reaches the exact tempered target at every trained temperature, reading
T as a prompt tag or as a learned embedding; the embedding is seen by the policy alone."""

import math
import random

import pytest
import torch

from gfnlm.core.config import TrainConfig
from gfnlm.core.trainer import Trainer
from gfnlm.inference.exact import normalize, policy_distribution, target_distribution, total_variation
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import LoraSettings, Policy
from gfnlm.model.temperature import TemperatureConditioning, parse_temperatures
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


@pytest.mark.parametrize("reads,logit_scale,stop_offset,adapter", [
    ("text", False, False, None), ("embedding", False, False, None), ("embedding", True, False, None),
    ("embedding", True, True, None), ("embedding", True, True, "scale"), ("embedding", True, True, "gate")])
def test_one_policy_learns_the_target_at_each_temperature(tmp_path, reads, logit_scale, stop_offset, adapter):
    task = ConditionalTask()
    policy = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=8, alpha=16))
    if reads == "embedding":
        policy.add_temperature_embedding(0.5, 1.0, logit_scale, task.space.terminator[0] if stop_offset else None,
                                         adapter_scale=adapter == "scale", adapter_gate=adapter == "gate")
    config = TrainConfig(objective="subtb", log_z="batch", conditional_temperatures="0.5,1.0", steps=800,
                         temperature_input=reads, temperature_logit_scale=logit_scale,
                         temperature_stop_offset=stop_offset, temperature_adapter_scale=adapter == "scale",
                         temperature_adapter_gate=adapter == "gate",
                         trajectories_per_prompt=32, lr=1e-2, warmup_steps=0, lr_schedule="cosine", replay_prob=0.25,
                         tempered_prob=0.25, epsilon=0.05, buffer_capacity=64, buffer_tolerance=0.0,
                         max_grad_norm=0.0, checkpoint_every=10_000, progress=False, output_dir=str(tmp_path))
    config.validate()
    rows = Trainer(config, task, policy, tmp_path).train()
    assert {round(r["reward_temperature"], 2) for r in rows} >= {0.5, 1.0}
    conditioning = TemperatureConditioning.for_run(config, task)
    learned = {}
    for t in TAGS:
        with conditioning.at(policy, t) as policy_prompt:
            learned[t] = normalize(policy_distribution(policy.model, task.space, policy_prompt(PROMPT)))
        target = target_distribution(list(learned[t]), task.log_reward, t)
        assert total_variation(learned[t], target) < 0.06, t
    # the tag matters: the two learned distributions are as far apart as the two targets
    targets = [target_distribution(list(learned[t]), task.log_reward, t) for t in TAGS]
    assert total_variation(learned[0.5], learned[1.0]) > 0.5 * total_variation(*targets)


def logits(policy, ids=((2, 1, 0, 2),)):
    with torch.no_grad():
        return policy.model(input_ids=torch.tensor(ids)).logits


def test_temperature_embedding_is_read_by_the_policy_alone(tmp_path):
    policy = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    embedding = policy.add_temperature_embedding(0.5, 1.0)
    conditioning = TemperatureConditioning("0.5:1.0", lambda t: (), reads="embedding")
    assert embedding.position(0.5) == pytest.approx(1.0) and embedding.position(1.0) == pytest.approx(-1.0)
    assert embedding.position(0.75) == pytest.approx(-1 / 3)  # linear in 1/T
    plain = logits(policy)
    with conditioning.at(policy, 0.5):
        assert torch.equal(logits(policy), plain)  # e(T) = 0 at the start: the policy starts as the base model
    with torch.no_grad():
        embedding.weight.normal_()
        for module in policy.model.modules():  # a non-zero LoRA too, so the adapter itself changes the output
            if hasattr(module, "lora_B"):
                module.lora_B["default"].weight.normal_(std=0.1)
    plain = logits(policy)
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
    again = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    again.add_temperature_embedding(0.5, 1.0)
    again.load_adapter(tmp_path / "a.safetensors")
    with conditioning.at(again, 0.75):
        assert torch.allclose(logits(again), by_temperature[0.75], atol=1e-6)
    bare = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    with pytest.raises(GfnlmError, match="has a temperature embedding and this policy lacks"):
        bare.load_adapter(tmp_path / "a.safetensors")
    bare.save_adapter(tmp_path / "b.safetensors")
    with pytest.raises(GfnlmError, match="lacks a temperature embedding and this policy has"):
        again.load_adapter(tmp_path / "b.safetensors")
    with pytest.raises(GfnlmError, match="has none"), conditioning.at(bare, 0.75):
        pass
    with pytest.raises(GfnlmError, match="not 1.5"), conditioning.at(policy, 1.5):
        pass


def test_logit_scale_multiplies_the_policy_logits_alone(tmp_path):
    """With temperature_logit_scale the policy's logits at T are its unscaled logits times
    exp(u + x(T) v); the base model and other adapters are unchanged, and the scale is saved with the adapter."""
    policy = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    embedding = policy.add_temperature_embedding(0.5, 1.0, logit_scale=True)
    conditioning = TemperatureConditioning("0.5:1.0", lambda t: (), reads="embedding")
    plain = logits(policy)
    with conditioning.at(policy, 0.5):
        assert torch.equal(logits(policy), plain)  # u = v = 0: the policy starts as the base model
    with torch.no_grad():
        embedding.logit_scale.copy_(torch.tensor([0.3, -0.5]))
    with policy.base():
        base = logits(policy)
    for t in (0.5, 0.75, 1.0):
        with conditioning.at(policy, t):
            factor = math.exp(0.3 - 0.5 * embedding.position(t))
            assert torch.allclose(logits(policy), plain * factor, atol=1e-6)
            with policy.base():
                assert torch.equal(logits(policy), base)
    assert any(p is embedding.logit_scale for p in policy.trainable_parameters())
    policy.save_adapter(tmp_path / "a.safetensors")
    again = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    again.add_temperature_embedding(0.5, 1.0, logit_scale=True)
    again.load_adapter(tmp_path / "a.safetensors")
    assert torch.equal(again.temperature_embedding.logit_scale, embedding.logit_scale)
    unscaled = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    unscaled.add_temperature_embedding(0.5, 1.0)
    with pytest.raises(GfnlmError, match="another temperature_logit_scale"):
        unscaled.load_adapter(tmp_path / "a.safetensors")
    with pytest.raises(GfnlmError, match="temperature_logit_scale needs"):
        TrainConfig(temperature_logit_scale=True).validate()


@pytest.mark.parametrize("bias", [True, False])
def test_stop_offset_shifts_the_stop_logit_of_the_policy_alone(tmp_path, bias):
    """With temperature_stop_offset the policy's logit of the stop token at T is shifted by b + x(T) w (after
    the logit scale; b = 0 without temperature_stop_offset_bias) and every other logit is unchanged; the base
    model is unchanged, and b, w are saved with the adapter."""
    stop = EnumerableTask().space.terminator[0]
    policy = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    embedding = policy.add_temperature_embedding(0.5, 1.0, logit_scale=True, stop_token=stop, stop_offset_bias=bias)
    conditioning = TemperatureConditioning("0.5:1.0", lambda t: (), reads="embedding")
    plain = logits(policy)
    with conditioning.at(policy, 0.5):
        assert torch.equal(logits(policy), plain)  # b = w = 0: the policy starts as the base model
    with torch.no_grad():
        embedding.logit_scale.copy_(torch.tensor([0.2, 0.1]))
        embedding.stop_offset.copy_(torch.tensor([-0.7, 1.5] if bias else [1.5]))
    with policy.base():
        base = logits(policy)
    others = [i for i in range(VOCAB) if i != stop]
    for t in (0.5, 0.75, 1.0):
        with conditioning.at(policy, t):
            scaled = plain * math.exp(0.2 + 0.1 * embedding.position(t))
            shifted = logits(policy)
            assert torch.allclose(shifted[..., others], scaled[..., others], atol=1e-6)
            shift = (-0.7 if bias else 0.0) + 1.5 * embedding.position(t)
            assert torch.allclose(shifted[..., stop], scaled[..., stop] + shift, atol=1e-6)
            with policy.base():
                assert torch.equal(logits(policy), base)
    assert any(p is embedding.stop_offset for p in policy.trainable_parameters())
    policy.save_adapter(tmp_path / "a.safetensors")
    again = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    again.add_temperature_embedding(0.5, 1.0, logit_scale=True, stop_token=stop, stop_offset_bias=bias)
    again.load_adapter(tmp_path / "a.safetensors")
    with conditioning.at(again, 0.75), conditioning.at(policy, 0.75):
        assert torch.allclose(logits(again), logits(policy), atol=1e-6)
    without = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    without.add_temperature_embedding(0.5, 1.0, logit_scale=True)
    with pytest.raises(GfnlmError, match="temperature_stop_offset"):
        without.load_adapter(tmp_path / "a.safetensors")
    other = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    other.add_temperature_embedding(0.5, 1.0, logit_scale=True, stop_token=stop, stop_offset_bias=not bias)
    with pytest.raises(GfnlmError, match="temperature_stop_offset_bias"):
        other.load_adapter(tmp_path / "a.safetensors")
    with pytest.raises(GfnlmError, match="outside the vocabulary"):
        Policy(tiny_llama(VOCAB, seed=0), None, LoraSettings(r=4, alpha=8)).add_temperature_embedding(
            0.5, 1.0, stop_token=VOCAB)
    with pytest.raises(GfnlmError, match="temperature_stop_offset needs"):
        TrainConfig(temperature_stop_offset=True).validate()
    with pytest.raises(GfnlmError, match="only acts with temperature_stop_offset"):
        TrainConfig(temperature_stop_offset_bias=False).validate()


@pytest.mark.parametrize("kind", ["scale", "gate"])
def test_adapter_factors_multiply_every_lora_layer_of_the_policy_alone(tmp_path, kind):
    """With temperature_adapter_scale the policy at T computes what the same policy computes with every LoRA
    B matrix multiplied by exp(g0 + x(T) g1); with temperature_adapter_gate, with column k of layer l's B
    multiplied by exp(G0[l, k] + x(T) G1[l, k]) (each layer adds B A x times its scaling, so the two agree
    exactly). The base model is unchanged; the factors get gradients and are saved with the adapter."""
    name = f"temperature_adapter_{kind}"

    def policy_with_lora(factors):
        policy = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
        with torch.no_grad():  # a LoRA that already moved away from the base model (B = 0 at the start)
            for n, p in policy.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.3)
        return policy, policy.add_temperature_embedding(0.5, 1.0, adapter_scale=factors and kind == "scale",
                                                        adapter_gate=factors and kind == "gate")

    policy, embedding = policy_with_lora(True)
    parameter = embedding.adapter_scale if kind == "scale" else embedding.adapter_gate
    reference, _ = policy_with_lora(False)
    conditioning = TemperatureConditioning("0.5:1.0", lambda t: (), reads="embedding")
    with conditioning.at(policy, 0.5), conditioning.at(reference, 0.5):
        assert torch.equal(logits(policy), logits(reference))  # zeros: a factor of 1
    lora_b = [p for n, p in reference.model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 2 * 7  # every linear layer of both transformer layers
    with torch.no_grad():
        parameter.copy_(torch.tensor([-0.4, 0.6]) if kind == "scale"
                        else torch.randn(2, len(lora_b), 4, generator=torch.Generator().manual_seed(3)) * 0.5)
    with policy.base():
        base = logits(policy)
    unscaled = [p.detach().clone() for p in lora_b]
    for t in (0.5, 0.75, 1.0):
        x = embedding.position(t)
        with torch.no_grad():
            for layer, (p, b) in enumerate(zip(lora_b, unscaled)):  # named_parameters keeps the module order
                factor = (math.exp(-0.4 + 0.6 * x) if kind == "scale"
                          else torch.exp(parameter[0, layer] + x * parameter[1, layer]))
                p.copy_(b * factor)  # a gate's r factors act on B's r columns
        with conditioning.at(policy, t), conditioning.at(reference, t):
            assert torch.allclose(logits(policy), logits(reference), atol=1e-5)
            with policy.base():
                assert torch.equal(logits(policy), base)
    with conditioning.at(policy, 0.6):
        policy.model(input_ids=torch.tensor([[2, 1, 0, 2]])).logits.sum().backward()
    assert parameter.grad is not None and (parameter.grad != 0).all()
    assert any(p is parameter for p in embedding.scalar_parameters())
    policy.save_adapter(tmp_path / "a.safetensors")
    again, _ = policy_with_lora(True)
    again.load_adapter(tmp_path / "a.safetensors")
    with conditioning.at(again, 0.75), conditioning.at(policy, 0.75):
        assert torch.equal(logits(again), logits(policy))
    without, _ = policy_with_lora(False)
    with pytest.raises(GfnlmError, match=name):
        without.load_adapter(tmp_path / "a.safetensors")
    with pytest.raises(GfnlmError, match=f"{name} needs"):
        TrainConfig(**{name: True}, conditional_temperatures="0.5:1.0", log_z="batch",
                    temperature_input="text").validate()
    with pytest.raises(GfnlmError, match="set one of the two"):
        TrainConfig(temperature_adapter_scale=True, temperature_adapter_gate=True, conditional_temperatures="0.5:1.0",
                    log_z="batch").validate()


def test_range_draws_favour_the_ends():
    cond = TemperatureConditioning("0.8:1.0", lambda t: ())
    rng = random.Random(0)
    draws = [cond.draw(rng) for _ in range(4000)]
    assert all(0.8 <= t <= 1.0 for t in draws) and len(set(draws)) > 15
    outer = sum(t <= 0.82 or t >= 0.98 for t in draws) / len(draws)
    assert 0.33 < outer < 0.5  # Beta(1/2, 1/2) puts 41% of the mass in the outer fifth (uniform: 20%)


def test_temperature_embedding_has_its_own_learning_rate(tmp_path):
    """Adam's first step moves every parameter with a gradient by its group's lr: e(T) by lr x its scale,
    the logit scale and the stop offset by lr x theirs. The adapter scale (no gradient while B = 0) is in
    their group."""
    task = ConditionalTask()
    policy = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
    embedding = policy.add_temperature_embedding(0.5, 1.0, logit_scale=True, stop_token=task.space.terminator[0],
                                                 adapter_scale=True)
    config = TrainConfig(objective="subtb", log_z="batch", conditional_temperatures="0.5,1.0", steps=1, lr=1e-3,
                         temperature_embedding_lr_scale=10.0, temperature_logit_scale_lr_scale=30.0,
                         temperature_logit_scale=True, temperature_stop_offset=True, temperature_adapter_scale=True,
                         warmup_steps=0, lr_schedule="constant",
                         max_grad_norm=0.0, checkpoint_every=10_000, progress=False, output_dir=str(tmp_path))
    config.validate()
    lora_b = [p for n, p in policy.model.named_parameters() if "lora_B" in n]
    before = [p.detach().clone() for p in lora_b]
    trainer = Trainer(config, task, policy, tmp_path)
    trainer.train()
    scalar_group = [g for g in trainer.optimizer.param_groups if g["lr"] == pytest.approx(3e-2)]
    assert len(scalar_group) == 1 and any(p is embedding.adapter_scale for p in scalar_group[0]["params"])
    assert embedding.weight.detach().abs().max().item() == pytest.approx(1e-2, rel=1e-3)  # from zero, lr x 10
    assert embedding.logit_scale.detach().abs().max().item() == pytest.approx(3e-2, rel=1e-3)  # lr x 30
    assert embedding.stop_offset.detach().abs().max().item() == pytest.approx(3e-2, rel=1e-3)  # the same group
    lora_moved = max((p.detach() - b).abs().max().item() for p, b in zip(lora_b, before))
    assert lora_moved == pytest.approx(1e-3, rel=1e-3)  # lr
    with pytest.raises(GfnlmError, match="temperature_embedding_lr_scale"):
        TrainConfig(temperature_embedding_lr_scale=0.0).validate()
    with pytest.raises(GfnlmError, match="temperature_logit_scale_lr_scale"):
        TrainConfig(temperature_logit_scale_lr_scale=-1.0).validate()


def test_temperature_loss_weight_scales_each_micro_batch_gradient_by_t_squared(tmp_path):
    """One micro-batch, the same draws: with the weight, the first step's gradient is (T / 1.0)^2 times the
    one without it, T being the temperature the step drew (seeds until both values were drawn)."""
    assert TemperatureConditioning("0.5:1.0", lambda t: ()).loss_weight(0.8) == pytest.approx(0.64)
    with pytest.raises(GfnlmError, match="needs conditional_temperatures"):
        TrainConfig(temperature_loss_weight=True).validate()
    drawn = set()
    for seed in range(6):
        grads, temperatures = {}, {}
        for weighted in (False, True):
            task = ConditionalTask()
            policy = Policy(tiny_llama(VOCAB, seed=0, init=0.3), None, LoraSettings(r=4, alpha=8))
            policy.add_temperature_embedding(0.5, 1.0)
            run = tmp_path / f"{seed}-{weighted}"
            config = TrainConfig(objective="subtb", log_z="batch", conditional_temperatures="0.5,1.0", steps=1,
                                 temperature_loss_weight=weighted, warmup_steps=0, lr_schedule="constant",
                                 max_grad_norm=0.0, checkpoint_every=10_000, progress=False, seed=seed,
                                 output_dir=str(run))
            config.validate()
            temperatures[weighted] = Trainer(config, task, policy, run).train_step()["reward_temperature"]
            grads[weighted] = torch.cat([p.grad.flatten() for p in policy.trainable_parameters() if p.grad is not None])
        t = temperatures[True]
        assert temperatures[False] == t and grads[False].abs().max() > 0
        torch.testing.assert_close(grads[True], grads[False] * t ** 2, rtol=1e-4, atol=1e-7)
        drawn.add(t)
        if drawn == {0.5, 1.0}:
            break
    assert drawn == {0.5, 1.0}
