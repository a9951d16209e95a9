"""The harness's corrected methods: each output is one draw of an importance-sampling or SMC run of
its own group of particles, with the trained policy or the base model as the proposal.

For an equal budget of generated tokens the policy proposal gets ``particles`` particles per output
and the base proposal as many as its own (usually longer) samples allow: particles x (policy tokens
per sample) / (base tokens per sample), measured on the same prompt.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gfnlm.core.action_space import ActionSpace
from gfnlm.inference.correction import importance_sample, smc
from gfnlm.model.policy import Policy
from gfnlm.targets import Target


@dataclass
class CorrectedOutputs:
    rows: list[list[int]]  # one output per group
    generated_tokens: int
    metrics: dict  # log_z_est, ess_fraction, and kl_q_p for importance sampling


def base_particles(particles: int, policy_tokens: float, base_tokens: float) -> int:
    """Particles of the base proposal that generate as many tokens as ``particles`` policy samples."""
    return max(1, round(particles * policy_tokens / max(base_tokens, 1e-9)))


def run_corrected(method: str, policy: Policy, space: ActionSpace, target: Target, prompt: Sequence[int],
                  outputs: int, particles: int, temperature: float, generator: torch.Generator,
                  ess_threshold: float = 0.5) -> CorrectedOutputs:
    """``method`` is gfn_is / gfn_smc / base_is / base_smc: the policy or the base model as the proposal."""
    proposal, kind = method.split("_")
    with policy.base() if proposal == "base" else contextlib.nullcontext(policy.model) as model:
        if kind == "is":
            out = importance_sample(model, space, target, prompt, outputs, particles, temperature, generator)
        else:
            out = smc(model, space, target, prompt, outputs, particles, temperature, generator, ess_threshold)
    metrics = {"log_z_est": float(torch.logsumexp(out.log_z, 0)) - math.log(outputs),
               "ess_fraction": float(out.ess.mean())}
    if kind == "is":  # KL(q || p_T) = log Z - E_q[log w], from every particle of the proposal
        metrics["kl_q_p"] = float((out.log_z - out.log_weights.mean(-1)).mean())
    return CorrectedOutputs(out.completions, out.generated_tokens, metrics)

