"""Importance sampling and SMC with a proposal policy on an enumerable problem: log Z estimates
converge to the exact value and the corrected samples approach the target as N grows."""

import math
import random
from collections import Counter

import pytest
import torch

from gfnlm.core.action_space import ActionSpace
from gfnlm.core.sampler import draw
from gfnlm.inference.correction import importance_sample, smc
from gfnlm.inference.exact import policy_distribution, total_variation
from gfnlm.infra.seeding import draw_indices
from gfnlm.targets import RuleTarget
from tests.conftest import tiny_llama

PROMPT = (5,)
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def problem():
    model = tiny_llama(6, seed=4, init=0.3)
    space = ActionSpace(6, [4], min_len=1, max_len=3, banned_tokens=[5])
    log_q = policy_distribution(model, space, PROMPT)
    # p_T proportional to q times a random factor in [e^-1.4, e^1.4]: q is a fair proposal with
    # bounded weights, so a few thousand particles pin log Z down.
    table = {z: TEMPERATURE * (lq + random.Random(str(z)).uniform(-1.4, 1.4)) for z, lq in log_q.items()}
    support = list(table)
    # the reward of unfinished prefixes (used by SMC's intermediate targets) is defined the same way
    target = RuleTarget(lambda p, z: table.get(tuple(z), random.Random(str(tuple(z))).uniform(-3.0, 1.0)), on="tokens")
    log_z = float(torch.logsumexp(torch.tensor([v / TEMPERATURE for v in table.values()]), 0))
    p = {z: math.exp(table[z] / TEMPERATURE - log_z) for z in support}
    return model, space, target, log_z, p


@pytest.mark.slow
@pytest.mark.parametrize("method", [importance_sample, smc])
def test_log_z_estimates_converge_and_samples_approach_the_target(problem, method):
    model, space, target, exact_log_z, p = problem
    errors, tvs = [], []
    for n in (1, 8, 64):
        g = torch.Generator().manual_seed(n)
        out = method(model, space, target, PROMPT, groups=1000, particles=n,
                     temperature=TEMPERATURE, generator=g)
        # Z-hat is unbiased: average over groups in the Z domain
        pooled = float(torch.logsumexp(out.log_z, 0) - math.log(len(out.log_z)))
        errors.append(abs(pooled - exact_log_z))
        counts = Counter(tuple(c) for c in out.completions)
        tvs.append(total_variation({z: c / len(out.completions) for z, c in counts.items()}, p))
        assert ((out.ess > 0) & (out.ess <= 1 + 1e-9)).all()
    assert errors[-1] < 0.05, errors
    # 1,000 draws over ~120 outcomes leave a sampling-noise floor of about 0.09 in TV
    assert tvs[0] > 0.2 and tvs[1] < 0.5 * tvs[0] and tvs[2] < tvs[1] + 0.02 and tvs[2] < 0.12, tvs


def test_a_perfect_proposal_needs_no_correction(problem):
    """R = q: every importance weight and every SMC increment (flow twists) is exactly 1."""
    model, space, _, _, _ = problem
    log_q = policy_distribution(model, space, PROMPT)
    exact = RuleTarget(lambda p, z: log_q.get(tuple(z), 0.0), on="tokens")
    for method in (importance_sample, smc):
        out = method(model, space, exact, PROMPT, groups=4, particles=16, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(out.log_z, torch.zeros(4, dtype=torch.float64), atol=1e-4)
        assert torch.allclose(out.ess, torch.ones(4, dtype=torch.float64), atol=1e-6)


def test_smc_resampling_at_every_step_keeps_log_z_unbiased(problem):
    model, space, target, exact_log_z, _ = problem
    out = smc(model, space, target, PROMPT, groups=2000, particles=8, temperature=TEMPERATURE,
              generator=torch.Generator().manual_seed(0), ess_threshold=1.0)
    assert int(out.resamplings.min()) >= 2
    pooled = float(torch.logsumexp(out.log_z, 0) - math.log(len(out.log_z)))
    assert abs(pooled - exact_log_z) < 0.03


def test_resampling_draws_on_the_cpu_are_torch_multinomial_with_the_same_generator():
    weights = torch.softmax(torch.tensor([0.3, -1.0, 2.0, 0.0], dtype=torch.float64), 0)
    ours = draw_indices(weights, 50, torch.Generator().manual_seed(5))
    plain = torch.multinomial(weights, 50, replacement=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(ours, plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_draws_for_cpu_weights_follow_a_seeded_cuda_generator():
    """SMC keeps its particle weights on the CPU while a run's generator lives on cuda: the draws must
    use that generator (reproducible) and come back on the weights' device."""
    weights = torch.tensor([0.1, 0.9], dtype=torch.float64)
    first = draw_indices(weights, 4000, torch.Generator(device="cuda").manual_seed(3))
    again = draw_indices(weights, 4000, torch.Generator(device="cuda").manual_seed(3))
    assert first.device.type == "cpu" and torch.equal(first, again)
    assert first.double().mean().item() == pytest.approx(0.9, abs=0.02)
    picks = draw(weights.repeat(4000, 1), torch.Generator(device="cuda").manual_seed(3))
    assert picks.device.type == "cpu" and picks.double().mean().item() == pytest.approx(0.9, abs=0.02)
