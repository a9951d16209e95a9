"""Exact distributions on small problems, by enumerating every sequence the action space allows.

Used by tests and by tiny-model checks: it runs the model on each full prefix (no caches, no packing),
so it is an independent reference for the sampler and the batched scoring code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from gfnlm.core.action_space import ActionSpace


@torch.no_grad()
def policy_distribution(model, action_space: ActionSpace, prompt: Sequence[int]) -> dict[tuple[int, ...], float]:
    """log q(Z) for every Z the policy can produce after ``prompt`` (a depth-first walk of the token stream)."""
    m = action_space.terminator_length
    device = next(model.parameters()).device
    out: dict[tuple[int, ...], float] = {}

    def walk(stream: list[int], match: int, logp: float) -> None:
        ids = torch.tensor([list(prompt) + stream], device=device)
        logits = model(input_ids=ids).logits[0, -1]
        log_probs = action_space.log_probs(
            logits, torch.tensor(len(stream), device=device), torch.tensor(match, device=device)
        )
        for tok in torch.nonzero(torch.isfinite(log_probs)).flatten().tolist():
            lp = logp + float(log_probs[tok])
            nxt = int(action_space.automaton[match, tok])
            if nxt == m:
                z = tuple((stream + [tok])[: len(stream) + 1 - m])
                out[z] = float(torch.logaddexp(torch.tensor(out.get(z, -math.inf)), torch.tensor(lp)))
            else:
                walk(stream + [tok], nxt, lp)

    walk([], 0, 0.0)
    return out


def normalize(log_weights: dict) -> dict:
    values = torch.tensor(list(log_weights.values()), dtype=torch.float64)
    log_z = torch.logsumexp(values, 0)
    return {k: float(math.exp(v - log_z)) for k, v in log_weights.items()}


def total_variation(p: dict, q: dict) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def target_distribution(support: Sequence[tuple[int, ...]], log_reward: Callable[[tuple[int, ...]], float],
                        temperature: float = 1.0) -> dict[tuple[int, ...], float]:
    """The normalized target R(Z)^(1/T) over an enumerated support."""
    return normalize({z: log_reward(z) / temperature for z in support})
