"""Amortize, then correct: importance sampling and SMC with a trained policy as the proposal.

Target p_T(Z) = R(Z stop)^(1/T) / Z(X). Both methods run G independent groups of N particles (one
batched computation) and return, per group, one completion drawn by the final weights, the estimate
of log Z(X) and the effective sample size. N = 1 is the plain amortized sampler.

- ``importance_sample``: N whole completions from the proposal q, weights R^(1/T) / q.
- ``smc``: particles grow one token at a time. The intermediate target (twist) of a partial state s
  is the flow that sub-trajectory balance trains the policy to satisfy, F(s) = R(s stop)^(1/T) /
  q(stop | s): the proposal's own estimate of the total target mass of the completions of s (1 where
  s cannot stop yet). A token a has incremental weight F(s a) / (F(s) q(a | s)), stopping
  R(s stop)^(1/T) / (F(s) q(stop | s)) = 1; the product telescopes to R^(1/T) / q, and for a perfect
  policy every increment is 1. (The bare per-prefix reward R(s stop)^(1/T) as twist is also valid
  but ignores how unlikely stopping at s is, and its weights explode.) A group is resampled
  (multinomially) when its ESS falls below ``ess_threshold`` x N; log Z is the usual product of
  average incremental weights. The twists read ``Target.twist_log_rewards``: a target that is zero on
  prefixes that may still be completed (a hard constraint) smooths them there; the final weight is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gfnlm.core.action_space import ActionSpace
from gfnlm.core.policy_scores import score_policy
from gfnlm.core.sampler import draw, sample_trajectories
from gfnlm.core.trajectories import Trajectories
from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.seeding import draw_indices
from gfnlm.targets import Target


@dataclass
class Corrected:
    completions: list[list[int]]  # one per group, drawn by the final weights
    particles: list[list[list[int]]]  # (G, N) completions
    log_weights: torch.Tensor  # (G, N) final unnormalized log-weights (since the last resampling)
    log_z: torch.Tensor  # (G,) estimate of log Z(X) per group
    ess: torch.Tensor  # (G,) final ESS / N
    resamplings: torch.Tensor  # (G,) how often each group was resampled (0 for IS)
    generated_tokens: int  # proposal tokens generated in all (the compute budget)


def ess_fraction(log_w: torch.Tensor) -> torch.Tensor:
    """(sum w)^2 / sum w^2 / N along the last axis."""
    return torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1)) / log_w.shape[-1]


def _pick(log_w: torch.Tensor, generator) -> torch.Tensor:
    return draw(torch.softmax(log_w.double(), -1), generator)


@torch.no_grad()
def terminal_log_rewards(target: Target, prompt: Sequence[int], rows, device, twist: bool = False) -> torch.Tensor:
    """log R(Z stop) of whole rows; ``twist``: the target's smoothed prefix rewards for SMC's intermediate
    targets."""
    traj = Trajectories.from_rows([tuple(prompt)], ["x"], [0] * len(rows), [list(r) for r in rows], device=device)
    return target.terminal_log_rewards(traj, twist).double().cpu()


@torch.no_grad()
def importance_sample(model, space: ActionSpace, target: Target, prompt: Sequence[int], groups: int, particles: int,
                      temperature: float = 1.0, generator: torch.Generator | None = None) -> Corrected:
    device = next(model.parameters()).device
    traj = sample_trajectories(model, space, [tuple(prompt)], ["x"],
                               torch.zeros(groups * particles, dtype=torch.long), generator=generator)
    scores = score_policy(model, space, traj)
    index = torch.arange(traj.batch_size, device=device)
    log_q = (scores.log_pf.sum(-1) + scores.log_stop[index, traj.lengths]).double().cpu()
    rows = [traj.row(b) for b in range(traj.batch_size)]
    log_r = terminal_log_rewards(target, prompt, rows, device)
    log_w = (log_r / temperature - log_q).view(groups, particles)
    chosen = _pick(log_w, generator).cpu()
    grouped = [rows[g * particles: (g + 1) * particles] for g in range(groups)]
    return Corrected([grouped[g][int(chosen[g])] for g in range(groups)], grouped, log_w,
                     torch.logsumexp(log_w, -1) - math.log(particles), ess_fraction(log_w),
                     torch.zeros(groups, dtype=torch.long), int(traj.lengths.sum()) + traj.batch_size)


@torch.no_grad()
def smc(model, space: ActionSpace, target: Target, prompt: Sequence[int], groups: int, particles: int,
        temperature: float = 1.0, generator: torch.Generator | None = None, ess_threshold: float = 0.5) -> Corrected:
    if space.terminator_length != 1:
        raise GfnlmError("SMC needs a one-token terminator (the stop must be one action); use importance sampling.")
    if not 0 <= ess_threshold <= 1:
        raise GfnlmError(f"ess_threshold must be in [0, 1], got {ess_threshold}.")
    device = next(model.parameters()).device
    G, N = groups, particles
    B = G * N
    stop_token = int(space.terminator_tensor[0])
    rows: list[list[int]] = [[] for _ in range(B)]
    finished = torch.zeros(B, dtype=torch.bool)
    log_w = torch.zeros(G, N, dtype=torch.float64)
    log_z = torch.zeros(G, dtype=torch.float64)
    resamplings = torch.zeros(G, dtype=torch.long)
    generated = 0

    def next_log_probs(logits: torch.Tensor, length: int) -> torch.Tensor:
        return space.log_probs(logits, torch.full((B,), length, device=device),
                               torch.zeros(B, dtype=torch.long, device=device)).double().cpu()

    def log_flow(states: list[list[int]], log_stop: torch.Tensor) -> torch.Tensor:
        """log F(s) = log R(s stop) / T - log q(stop | s), or 0 while s cannot stop."""
        values = terminal_log_rewards(target, prompt, states, device, twist=True) / temperature - log_stop
        return torch.where(torch.isfinite(log_stop), values, torch.zeros_like(values))

    out = model(input_ids=torch.tensor([list(prompt)], device=device), use_cache=True)
    cache = out.cache
    cache.batch_repeat_interleave(B)
    log_probs = next_log_probs(out.logits[:, -1].expand(B, -1), 0)
    twist = log_flow(rows, log_probs[:, stop_token])
    step = 0
    while True:
        tokens = draw(torch.softmax(log_probs, -1), generator)
        chosen_lp = log_probs.gather(-1, tokens[:, None]).squeeze(-1)
        active = ~finished
        stopping = active & (tokens == stop_token)
        growing = active & ~stopping
        generated += int(active.sum())
        increment = torch.zeros(B, dtype=torch.float64)
        if bool(stopping.any()):  # final target R(s stop)^(1/T) over F(s) q(stop | s): 1 up to rounding
            final = terminal_log_rewards(target, prompt, [rows[b] for b in torch.nonzero(stopping).flatten()],
                                         device) / temperature
            increment[stopping] = final - twist[stopping] - chosen_lp[stopping]
        finished |= stopping
        if bool(finished.all()):
            log_w += increment.view(G, N)
            break
        for b in torch.nonzero(growing).flatten().tolist():
            rows[b].append(int(tokens[b]))
        step += 1
        feed = torch.where(finished, torch.full_like(tokens, stop_token), tokens)  # finished rows idle on a dummy
        out = model(input_ids=feed[:, None].to(device), cache=cache, use_cache=True)
        cache, log_probs = out.cache, next_log_probs(out.logits[:, -1], step)
        new_twist = twist.clone()
        if bool(growing.any()):
            index = torch.nonzero(growing).flatten()
            new_twist[index] = log_flow([rows[b] for b in index.tolist()], log_probs[index, stop_token])
        increment[growing] = new_twist[growing] - twist[growing] - chosen_lp[growing]
        log_w += increment.view(G, N).nan_to_num(nan=-math.inf)  # -inf - -inf: a particle that already had weight 0
        twist = new_twist
        # Resample the groups whose weights have degenerated.
        low = ess_fraction(log_w) < ess_threshold
        if bool(low.any()):
            order = torch.arange(B)
            for g in torch.nonzero(low).flatten().tolist():
                log_z[g] += torch.logsumexp(log_w[g], 0) - math.log(N)
                picks = draw_indices(torch.softmax(log_w[g], 0), N, generator)
                order[g * N: (g + 1) * N] = g * N + picks
                log_w[g] = 0.0
                resamplings[g] += 1
            rows = [list(rows[int(i)]) for i in order]
            finished, twist, log_probs = finished[order], twist[order], log_probs[order]
            cache.reorder_cache(order.to(device))
    log_z += torch.logsumexp(log_w, -1) - math.log(N)
    chosen = _pick(log_w, generator).cpu()
    grouped = [rows[g * N: (g + 1) * N] for g in range(G)]
    return Corrected([grouped[g][int(chosen[g])] for g in range(G)], grouped, log_w, log_z, ess_fraction(log_w),
                     resamplings, generated)

