"""Importance-sampling estimators of log Z, KL(q || p_T) and ESS against their exact values on a
tiny enumerable model."""

import math
import random

import pytest
import torch

from gfnlm.action_space import ActionSpace
from gfnlm.evaluation.exact import policy_distribution
from gfnlm.evaluation.importance import exact_divergences, importance_estimates
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def enumerated():
    model = tiny_llama(6, seed=3, init=0.3)
    space = ActionSpace(6, [4], min_len=1, max_len=3, banned_tokens=[5])
    log_q = policy_distribution(model, space, (5,))
    # R = q x a random factor in [e^-1.5, e^1.5]: bounded weights, so 200k samples pin the estimates down
    log_reward = {z: v + random.Random(str(z)).uniform(-1.5, 1.5) for z, v in log_q.items()}
    return log_q, log_reward


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_estimates_from_samples_converge_to_the_exact_values(enumerated, temperature):
    log_q, log_reward = enumerated
    outcomes = list(log_q)
    probs = torch.tensor([math.exp(log_q[z]) for z in outcomes], dtype=torch.float64)
    assert abs(float(probs.sum()) - 1) < 1e-5
    draws = torch.multinomial(probs, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    samples = [outcomes[i] for i in draws.tolist()]
    est = importance_estimates([log_reward[z] for z in samples], [log_q[z] for z in samples], temperature)
    exact = exact_divergences(log_q, log_reward, temperature)
    assert exact["kl_q_p"] > 0.1 and exact["ess_fraction"] < 0.9  # a case where q and p really differ
    assert est["log_z"] == pytest.approx(exact["log_z"], abs=0.02)
    assert est["kl_q_p"] == pytest.approx(exact["kl_q_p"], abs=0.02)
    assert est["ess_fraction"] == pytest.approx(exact["ess_fraction"], abs=0.02)
    # the target's mean log-reward, which differs from q's own
    q_mean = sum(math.exp(log_q[z]) * log_reward[z] for z in outcomes)
    assert abs(exact["target_log_reward"] - q_mean) > 0.2
    assert est["target_log_reward"] == pytest.approx(exact["target_log_reward"], abs=0.02)


def test_a_perfect_sampler_has_zero_gap_and_full_ess(enumerated):
    log_q, _ = enumerated
    shifted = {z: v + 2.5 for z, v in log_q.items()}  # R proportional to q: p_T = q, log Z = 2.5
    samples = random.Random(0).choices(list(log_q), k=50)
    est = importance_estimates([shifted[z] for z in samples], [log_q[z] for z in samples])
    assert est["log_z"] == pytest.approx(2.5, abs=1e-9)
    assert est["kl_q_p"] == pytest.approx(0.0, abs=1e-9)
    assert est["ess_fraction"] == pytest.approx(1.0, abs=1e-9)
    # p_T = q: the estimate is the plain sample mean
    assert est["target_log_reward"] == pytest.approx(sum(shifted[z] for z in samples) / 50, abs=1e-9)
    exact = exact_divergences(log_q, shifted)
    assert exact["log_z"] == pytest.approx(2.5, abs=1e-6) and abs(exact["kl_q_p"]) < 1e-6


def test_ess_matches_its_definition():
    log_w = [0.3, -1.2, 2.0, 0.0]
    w = [math.exp(x) for x in log_w]
    est = importance_estimates(log_w, [0.0] * 4)
    assert est["ess_fraction"] == pytest.approx(sum(w) ** 2 / sum(x * x for x in w) / 4)
    assert est["log_z"] == pytest.approx(math.log(sum(w) / 4))
    assert est["kl_q_p"] == pytest.approx(math.log(sum(w) / 4) - sum(log_w) / 4)
