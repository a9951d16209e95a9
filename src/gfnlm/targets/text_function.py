"""A log-reward computed by a Python function on the decoded texts of a batch: rules, checkers, verifiers.

``fn(texts, inputs)`` receives the decoded text of every distinct (prompt, prefix of Z) of the batch, and for
each the input row (a dict of columns) its prompt came from; it returns one log-reward per text (minus
infinity: zero reward). It is called once per batch, so a verifier can work in bulk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from gfnlm.core.trajectories import Trajectories
from gfnlm.infra.errors import GfnlmError
from gfnlm.targets.base import Target

UNKNOWN_PROMPT = ("This prompt is not one of the posterior's inputs: its reward reads the columns of an input, so "
                  "score or correct only the prompts of the inputs file.")
TextReward = Callable[[list[str], list[dict]], Sequence[float]]


class TextFunction(Target):
    """log R(z_1..z_i stop | X) = fn([decode(z_1..z_i)], [inputs of X]) for every prefix.

    ``inputs``: the policy's prompt tokens -> that prompt's input row; ``name`` names the term in errors.
    """

    def __init__(self, fn: TextReward, tokenizer, inputs: dict[tuple[int, ...], dict], name: str = "function"):
        self.fn = fn
        self.tokenizer = tokenizer
        self.inputs = {tuple(k): v for k, v in inputs.items()}
        self.name = name

    def log_rewards(self, traj: Trajectories) -> torch.Tensor:
        positions, values = self._values(traj, every_prefix=True)
        out = torch.zeros(traj.batch_size, traj.max_length + 1)
        for b, row in enumerate(positions):
            out[b, : len(row)] = torch.tensor([values[k] for k in row])
        return out.to(traj.tokens.device)

    def terminal_log_rewards(self, traj: Trajectories, twist: bool = False) -> torch.Tensor:
        """Whole rows only: one call on the distinct completed texts."""
        positions, values = self._values(traj, every_prefix=False)
        return torch.tensor([values[row[-1]] for row in positions]).to(traj.tokens.device)

    def _values(self, traj: Trajectories, every_prefix: bool) -> tuple[list[list[int]], list[float]]:
        """One call on the distinct (prompt, text) pairs of the batch: every prefix of each row, or its whole
        text; returns, per row, the positions of its prefixes (or of its whole text) in the values."""
        keys: dict[tuple, int] = {}
        positions = []
        for b in range(traj.batch_size):
            prompt, row = traj.row_prompt(b), tuple(traj.row(b))
            if prompt not in self.inputs:
                raise GfnlmError(UNKNOWN_PROMPT)
            ends = range(len(row) + 1) if every_prefix else [len(row)]
            positions.append([keys.setdefault((prompt, row[:i]), len(keys)) for i in ends])
        items = list(keys)
        texts = self.tokenizer.batch_decode([list(z) for _, z in items])
        return positions, self.call(texts, [self.inputs[p] for p, _ in items])

    def call(self, texts: list[str], inputs: list[dict]) -> list[float]:
        """The function's values, checked: one finite number or minus infinity per text."""
        try:
            values = list(self.fn(texts, inputs))
        except GfnlmError:
            raise
        except Exception as exc:  # a user's function: say which term failed, keep its message
            raise GfnlmError(f"{self.name} raised {type(exc).__name__}: {exc}") from exc
        if len(values) != len(texts):
            raise GfnlmError(f"{self.name} returned {len(values)} values for {len(texts)} texts; return one "
                             "log-reward per text.")
        out = []
        for text, value in zip(texts, values):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise GfnlmError(f"{self.name} returned {value!r} for {text!r}; return numbers.") from None
            if math.isnan(number) or number == math.inf:
                raise GfnlmError(f"{self.name} returned {number} for {text!r}; a log-reward is finite, or -inf "
                                 "for an output that must never be sampled.")
            out.append(number)
        return out
