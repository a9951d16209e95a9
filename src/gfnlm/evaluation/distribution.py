"""Distances between an empirical distribution over a finite set of outcomes and a target."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

from gfnlm.infra.seeding import numpy_rng


def empirical_metrics(outcomes: Sequence[Hashable | None], support: Sequence[Hashable]) -> dict:
    """Compare samples with the uniform distribution over ``support``; ``None`` marks an invalid sample.

    - ``tv``: total variation between the empirical distribution (invalid samples are a bucket the
      target gives no mass) and the uniform target;
    - ``kl_valid``: KL(empirical over valid samples || uniform), in nats (the invalid share is reported
      separately as 1 - valid_fraction, since KL is infinite once any sample is invalid);
    - ``valid_fraction``, ``distinct`` (distinct valid values), ``n``.
    """
    n = len(outcomes)
    counts = Counter(o for o in outcomes if o is not None)
    valid = sum(counts.values())
    target = 1.0 / len(support)
    tv = 0.5 * sum(abs(counts.get(s, 0) / n - target) for s in support) + 0.5 * (n - valid) / n
    kl = math.nan
    if valid:
        kl = sum((c / valid) * math.log((c / valid) / target) for c in counts.values())
    return {"n": n, "valid_fraction": valid / n, "distinct": len(counts), "tv": tv, "kl_valid": kl}


def uniform_noise_floor(support_size: int, n: int, trials: int = 200, seed: int = 0) -> dict:
    """Mean TV and KL of ``n`` samples drawn from the exact uniform target: the best a perfect sampler
    can score with this many samples."""
    rng = numpy_rng(seed)
    tvs, kls = [], []
    for _ in range(trials):
        counts = rng.multinomial(n, np.full(support_size, 1.0 / support_size))
        p = counts / n
        tvs.append(0.5 * np.abs(p - 1.0 / support_size).sum())
        nz = p > 0
        kls.append(float((p[nz] * np.log(p[nz] * support_size)).sum()))
    return {"tv": float(np.mean(tvs)), "kl_valid": float(np.mean(kls))}
