"""Importance-sampling estimators of log Z, KL(q || p_T) and ESS against their exact values on a
tiny enumerable model."""

import math
import random

import pytest
import torch

from gfnlm.core.action_space import ActionSpace
from gfnlm.evaluation.diversity import embedding_diversity
from gfnlm.inference.exact import policy_distribution
from gfnlm.inference.importance import exact_divergences, importance_estimates
from tests.conftest import FixedEncoder, tiny_llama


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


def test_weighted_diversity_matches_the_pair_sum_and_the_plain_one_for_equal_weights():
    texts = ["a", "b", "c", "a", "d"]
    encoder = FixedEncoder(set(texts))
    weights = [0.1, 0.4, 0.2, 0.2, 0.1]
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    sims = {p: float(encoder.vectors[texts[p[0]]] @ encoder.vectors[texts[p[1]]]) for p in pairs}
    brute = 1 - sum(weights[i] * weights[j] * sims[i, j] for i, j in pairs) / sum(weights[i] * weights[j]
                                                                                   for i, j in pairs)
    assert embedding_diversity(texts, encoder, weights) == pytest.approx(brute, abs=1e-6)
    assert embedding_diversity(texts, encoder, [0.2] * 5) == pytest.approx(embedding_diversity(texts, encoder),
                                                                            abs=1e-6)
    assert math.isnan(embedding_diversity(texts, encoder, [1.0, 0, 0, 0, 0]))  # no pair carries weight


def test_target_diversity_estimate_converges_to_the_exact_one(enumerated):
    """Samples of q, weighted by p_T / q, estimate the diversity of two independent draws of p_T."""
    log_q, log_reward = enumerated
    outcomes = list(log_q)
    encoder = FixedEncoder([str(z) for z in outcomes])
    probs = torch.tensor([math.exp(log_q[z]) for z in outcomes], dtype=torch.float64)
    draws = torch.multinomial(probs, 3000, replacement=True, generator=torch.Generator().manual_seed(0))
    samples = [outcomes[i] for i in draws.tolist()]
    temperature = 0.5
    est = importance_estimates([log_reward[z] for z in samples], [log_q[z] for z in samples], temperature)
    estimate = embedding_diversity([str(z) for z in samples], encoder, est["weights"])

    def exact_diversity(log_p):  # 1 - E[cos(z, z')] for z, z' drawn independently from p (z = z' included)
        p = torch.softmax(torch.tensor([log_p[z] for z in outcomes], dtype=torch.float64), 0).float()
        emb = encoder.encode([str(z) for z in outcomes])
        return float(1 - p @ (emb @ emb.T) @ p)

    target = exact_diversity({z: log_reward[z] / temperature for z in outcomes})
    proposal = exact_diversity(log_q)
    assert abs(target - proposal) > 0.05  # the target is less varied than q: a case the estimate must see
    assert estimate == pytest.approx(target, abs=0.02)
    assert embedding_diversity([str(z) for z in samples], encoder) == pytest.approx(proposal, abs=0.02)
