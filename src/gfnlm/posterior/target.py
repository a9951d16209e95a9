"""A posterior's target: the weighted sum of its terms' log-rewards, checked on the first batch it scores."""

from __future__ import annotations

import math

import torch

from gfnlm.core.trajectories import Trajectories
from gfnlm.infra.errors import GfnlmError
from gfnlm.posterior.terms import Term
from gfnlm.targets import Target


class PosteriorTarget(Target):
    """log R = sum_k weight_k x term_k, every prefix at once. A hard constraint contributes 0 or -inf whatever
    its weight; in training (``exact=False``) and in SMC's intermediate targets a violation costs
    ``hard_penalty`` nats instead, so that the policy still learns from the other terms of outputs that violate
    it, and a prefix that has not met the constraint yet keeps its particles alive. ``source`` (the config
    file) names where the terms were written, in errors."""

    def __init__(self, terms: list[tuple[Term, Target]], source: str = "", hard_penalty: float = 50.0,
                 exact: bool = True):
        self.terms = terms
        self.source = source
        self.hard_penalty = hard_penalty
        self.exact = exact
        self.checked = False

    def term_values(self, traj: Trajectories) -> list[torch.Tensor]:
        """Each term's own (B, L+1) log-rewards, before weighting."""
        return [target.log_rewards(traj) for _, target in self.terms]

    def combine(self, values: list[torch.Tensor], exact: bool) -> torch.Tensor:
        total = torch.zeros_like(values[0])
        for (term, _), value in zip(self.terms, values):
            if term.is_hard_constraint:
                total = total + (value if exact else value.clamp(min=-self.hard_penalty))
            elif term.weight:
                total = total + term.weight * value
        return total

    def log_rewards(self, traj: Trajectories) -> torch.Tensor:
        values = self.term_values(traj)
        if not self.checked:
            self.check_first_batch(traj, values)
        return self.combine(values, self.exact)

    def twist_log_rewards(self, traj: Trajectories) -> torch.Tensor:
        return self.combine(self.term_values(traj), exact=False)

    def terminal_log_rewards(self, traj: Trajectories, twist: bool = False) -> torch.Tensor:
        values = [target.terminal_log_rewards(traj) for _, target in self.terms]
        return self.combine(values, self.exact and not twist)

    def check_first_batch(self, traj: Trajectories, values: list[torch.Tensor]) -> None:
        """A term that is NaN anywhere, or that gives zero reward (-inf) to every sampled output, stops the run
        with one line: nothing could be learned from it. A hard constraint may reject a whole batch."""
        ends = traj.lengths.to(values[0].device)[:, None]
        where = f"{self.source}: " if self.source else ""
        for (term, _), value in zip(self.terms, values):
            if torch.isnan(value).any():
                raise GfnlmError(f"{where}reward {term.name} is NaN for some output of the first batch.")
            final = value.gather(1, ends).squeeze(1)
            if term.kind in ("lm", "function") and bool((final == -math.inf).all()):
                raise GfnlmError(f"{where}reward {term.name} is minus infinity for every output of the first batch "
                                 f"({traj.batch_size} samples): nothing to learn from; give it a finite floor.")
        self.checked = True
