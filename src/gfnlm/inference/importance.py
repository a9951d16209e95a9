"""How well a sampler q matches a target p_T = R^(1/T) / Z, estimated from q's own samples.

With N samples z_i ~ q and log-weights log w_i = log R(z_i)/T - log q(z_i):
- log Z ~ logsumexp(log w) - log N (unbiased for Z, a lower bound on log Z in expectation);
- ELBO = mean(log w), and KL(q || p_T) = log Z - ELBO (the ELBO gap; >= 0 up to sampling noise);
- ESS = (sum w)^2 / sum w^2, reported as a fraction of N (1 means q = p_T);
- E_{p_T}[log R] ~ sum_i w_i log R(z_i) / sum_i w_i (self-normalized): the target's own mean log-reward, to
  compare with q's (a q sharper than p_T has the higher mean). Biased toward q's own mean when the ESS is
  small. The normalized weights are returned too, for other self-normalized estimates (e.g. the target's
  own diversity, ``embedding_diversity(..., weights=...)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def importance_estimates(log_rewards: Sequence[float], log_q: Sequence[float], temperature: float = 1.0) -> dict:
    """Estimates of log Z, the ELBO, KL(q || p_T), the ESS fraction and E_{p_T}[log R] from samples of q."""
    if len(log_rewards) != len(log_q) or not len(log_q):
        raise ValueError("log_rewards and log_q must be non-empty and of equal length")
    log_r = torch.tensor(list(log_rewards), dtype=torch.float64)
    log_w = log_r / temperature - torch.tensor(list(log_q), dtype=torch.float64)
    n = log_w.numel()
    log_z = float(torch.logsumexp(log_w, 0)) - math.log(n)
    elbo = float(log_w.mean())
    ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))) / n
    weights = torch.softmax(log_w, 0)
    # R = 0 has weight 0; with no sample of R > 0 the target's mean is unknown
    target_log_reward = float(torch.where(weights > 0, weights * log_r, 0.0).sum()) if log_z > -math.inf else math.nan
    return {"log_z": log_z, "elbo": elbo, "kl_q_p": log_z - elbo, "ess_fraction": ess,
            "target_log_reward": target_log_reward, "weights": weights.tolist(), "n": n}


def exact_divergences(log_q: dict, log_reward: dict, temperature: float = 1.0) -> dict:
    """The exact quantities the estimators target, for a fully enumerated q (dicts outcome -> log value)."""
    outcomes = list(log_q)
    lq = torch.tensor([log_q[o] for o in outcomes], dtype=torch.float64)
    lr = torch.tensor([log_reward[o] for o in outcomes], dtype=torch.float64) / temperature
    log_z = float(torch.logsumexp(lr, 0))
    q = lq.exp()
    kl = float((q * (lq - (lr - log_z))).sum())
    # ESS / N -> (E_q w)^2 / E_q w^2 = Z^2 / sum_z p_T-unnormalized^2 / q
    second = float(torch.logsumexp(2 * lr - lq, 0))
    target_log_reward = float((torch.softmax(lr, 0) * lr).sum()) * temperature
    return {"log_z": log_z, "kl_q_p": kl, "ess_fraction": math.exp(2 * log_z - second),
            "target_log_reward": target_log_reward}
