"""Rule-based targets: a user function of the (decoded) prompt and completion gives the log-reward."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gfnlm.core.trajectories import Trajectories
from gfnlm.targets.base import Target


class RuleTarget(Target):
    """log R(z_1..z_i stop) = fn(prompt, completion) for every prefix.

    ``on="text"``: fn receives the decoded prompt and prefix (needs ``tokenizer``);
    ``on="tokens"``: fn receives tuples of token ids. Results are memoized within a call, since rows
    share prefixes.
    """

    def __init__(self, fn: Callable[[object, object], float], tokenizer=None, on: str = "text"):
        if on not in ("text", "tokens"):
            raise ValueError("on must be 'text' or 'tokens'")
        if on == "text" and tokenizer is None:
            raise ValueError("a text rule needs the tokenizer")
        self.fn = fn
        self.tokenizer = tokenizer
        self.on = on

    def _view(self, ids: tuple[int, ...]):
        return self.tokenizer.decode(list(ids)) if self.on == "text" else ids

    def log_rewards(self, traj: Trajectories) -> torch.Tensor:
        out = torch.zeros(traj.batch_size, traj.max_length + 1)
        memo: dict[tuple, float] = {}
        for b in range(traj.batch_size):
            prompt = traj.row_prompt(b)
            row = tuple(traj.row(b))
            for i in range(len(row) + 1):
                key = (prompt, row[:i])
                if key not in memo:
                    memo[key] = float(self.fn(self._view(prompt), self._view(row[:i])))
                out[b, i] = memo[key]
        return out.to(traj.tokens.device)
