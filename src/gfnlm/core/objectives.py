"""GFlowNet objectives on trajectories whose every terminable prefix has a reward.

Notation for one trajectory s_0 -> ... -> s_n -> stop:
  log_pf[k]   = log q(z_{k+1} | s_k),  log_stop[i] = log q(stop | s_i),  log_reward[i] = log R(s_i stop) / T.
At a terminable state the flow is F(s_i) = R(s_i stop) / q(stop | s_i). Writing C_i = sum_{k<i} log_pf[k]
and phi_i = log F(s_i) - C_i, the balance of the sub-trajectory s_i -> s_j is

  D_ij = log F(s_i) + sum_{k=i}^{j-1} log_pf[k] - log F(s_j) = phi_i - phi_j.

- ``subtb``: the modified sub-trajectory balance of the paper: all pairs i < j of terminable states,
  weight lambda^(j-i-1), pooled over the batch: sum w D^2 / sum w.
- ``db``: the same restricted to consecutive terminable states (detailed balance).
- ``tb``: trajectory balance with a learned log Z(X): D = log Z(X) + C_n + log_stop[n] - log_reward[n].

When s_0 cannot terminate (min_len > 0) its flow is unknown; pass ``log_z`` and it serves as log F(s_0)
for ``subtb`` and ``db`` (otherwise the first policy step would never be trained). ``batch_log_z`` gives
the value that minimizes the loss given the batch's trajectories of each prompt (a per-prompt baseline,
as in the log-variance loss), so nothing has to be learned: a table of per-prompt values, each visited
rarely, lags far behind the policy when there are many prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

OBJECTIVES = ("subtb", "tb", "db")
LOG_Z_MODES = ("learned", "batch")


@dataclass
class BalanceTerms:
    log_pf: torch.Tensor  # (B, L)
    log_stop: torch.Tensor  # (B, L+1)
    log_reward: torch.Tensor  # (B, L+1), already divided by the reward temperature
    terminable: torch.Tensor  # (B, L+1) bool
    lengths: torch.Tensor  # (B,)
    log_z: torch.Tensor | None = None  # (B,)


def _potentials(terms: BalanceTerms) -> tuple[torch.Tensor, torch.Tensor]:
    """phi (B, L+1) and which states are endpoints (B, L+1); phi is 0 off the endpoints."""
    steps = torch.arange(terms.log_pf.shape[1], device=terms.log_pf.device)
    log_pf = torch.where(steps[None] < terms.lengths[:, None], terms.log_pf, torch.zeros_like(terms.log_pf))
    cumulative = torch.cat([log_pf.new_zeros(log_pf.shape[0], 1), log_pf.cumsum(-1)], dim=1)
    zero = torch.zeros_like(terms.log_reward)
    phi = torch.where(terms.terminable, terms.log_reward - terms.log_stop, zero) - cumulative
    endpoint = terms.terminable.clone()
    if terms.log_z is not None:
        root = ~terms.terminable[:, 0]
        phi = torch.cat([torch.where(root, terms.log_z, phi[:, 0])[:, None], phi[:, 1:]], dim=1)
        endpoint[:, 0] = endpoint[:, 0] | root
    return torch.where(endpoint, phi, torch.zeros_like(phi)), endpoint


@torch.no_grad()
def batch_log_z(name: str, terms: BalanceTerms, groups: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """(B,) log Z for each row: the minimizer of ``name``'s loss over one log Z shared by the rows of each
    group (rows with the same prompt), i.e. the weighted mean of the values each row implies."""
    if name == "tb":
        n = terms.lengths
        rows = torch.arange(n.shape[0], device=n.device)
        steps = torch.arange(terms.log_pf.shape[1], device=n.device)
        path = torch.where(steps[None] < n[:, None], terms.log_pf, torch.zeros_like(terms.log_pf)).sum(-1)
        implied = terms.log_reward[rows, n] - terms.log_stop[rows, n] - path
        weight = torch.ones_like(implied)
    else:
        no_root = BalanceTerms(terms.log_pf, terms.log_stop, terms.log_reward, terms.terminable, terms.lengths)
        phi, endpoint = _potentials(no_root)
        # the root pairs (0, j): weight lambda^(j-1) for subtb; the first terminable state only for db;
        # rows whose s_0 can stop never use log Z
        j = torch.arange(phi.shape[1], device=phi.device)[None].expand_as(phi)
        later = endpoint & (j > 0) & ~terms.terminable[:, :1]
        if name == "db":
            first = torch.where(later, j, torch.full_like(j, phi.shape[1])).min(1, keepdim=True).values
            w = (later & (j == first)).to(phi.dtype)
        else:
            w = torch.where(later, torch.tensor(float(lam), device=phi.device, dtype=phi.dtype) ** (j - 1).clamp(min=0),
                            torch.zeros_like(phi))
        implied = (w * phi).sum(1) / w.sum(1).clamp(min=1e-30)
        weight = w.sum(1)
    groups = groups.to(implied.device)
    size = int(groups.max()) + 1
    num = torch.zeros(size, device=implied.device, dtype=implied.dtype).index_add_(0, groups, weight * implied)
    den = torch.zeros(size, device=implied.device, dtype=implied.dtype).index_add_(0, groups, weight)
    return (num / den.clamp(min=1e-30))[groups]


def subtb_loss(terms: BalanceTerms, lam: float = 1.0) -> torch.Tensor:
    phi, endpoint = _potentials(terms)
    states = phi.shape[1]
    idx = torch.arange(states, device=phi.device)
    gap = idx[None, :] - idx[:, None]  # j - i
    pairs = endpoint[:, :, None] & endpoint[:, None, :] & (gap > 0)[None]
    weight = torch.where(gap > 0, torch.tensor(lam, device=phi.device) ** (gap - 1).clamp(min=0), 0.0)
    weight = weight[None] * pairs
    residual = phi[:, :, None] - phi[:, None, :]
    total = weight.sum()
    if total == 0:
        return phi.sum() * 0.0
    return (weight * residual.pow(2)).sum() / total


def db_loss(terms: BalanceTerms) -> torch.Tensor:
    phi, endpoint = _potentials(terms)
    states = phi.shape[1]
    idx = torch.arange(states, device=phi.device)[None].expand_as(endpoint)
    last_endpoint = torch.where(endpoint, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    previous = torch.cat([torch.full_like(idx[:, :1], -1), last_endpoint[:, :-1]], dim=1)
    has_pair = endpoint & (previous >= 0)
    phi_previous = phi.gather(1, previous.clamp(min=0))
    residual = (phi_previous - phi)[has_pair]
    if residual.numel() == 0:
        return phi.sum() * 0.0
    return residual.pow(2).mean()


def tb_loss(terms: BalanceTerms) -> torch.Tensor:
    if terms.log_z is None:
        raise ValueError("trajectory balance needs a learned log Z")
    n = terms.lengths
    rows = torch.arange(n.shape[0], device=n.device)
    steps = torch.arange(terms.log_pf.shape[1], device=n.device)
    path = torch.where(steps[None] < n[:, None], terms.log_pf, torch.zeros_like(terms.log_pf)).sum(-1)
    residual = terms.log_z + path + terms.log_stop[rows, n] - terms.log_reward[rows, n]
    return residual.pow(2).mean()


def balance_loss(name: str, terms: BalanceTerms, subtb_lambda: float = 1.0) -> torch.Tensor:
    if name == "subtb":
        return subtb_loss(terms, subtb_lambda)
    if name == "db":
        return db_loss(terms)
    if name == "tb":
        return tb_loss(terms)
    raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")


class LogPartition(nn.Module):
    """A learned log Z(X) per training prompt (a table indexed by the prompt's position in the task)."""

    def __init__(self, num_prompts: int):
        super().__init__()
        self.values = nn.Parameter(torch.zeros(num_prompts))

    def forward(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        return self.values[prompt_ids]
