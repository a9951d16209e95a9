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
        keys: dict[tuple, int] = {}  # (prompt, prefix) -> position in the call
        where = []
        for b in range(traj.batch_size):
            prompt, row = traj.row_prompt(b), tuple(traj.row(b))
            if prompt not in self.inputs:
                raise GfnlmError(UNKNOWN_PROMPT)
            where.append([keys.setdefault((prompt, row[:i]), len(keys)) for i in range(len(row) + 1)])
        items = list(keys)
        texts = self.tokenizer.batch_decode([list(z) for _, z in items])
        values = self.call(texts, [self.inputs[p] for p, _ in items])
        out = torch.zeros(traj.batch_size, traj.max_length + 1)
        for b, positions in enumerate(where):
            out[b, : len(positions)] = torch.tensor([values[k] for k in positions])
        return out.to(traj.tokens.device)

    def terminal_log_rewards(self, traj: Trajectories, twist: bool = False) -> torch.Tensor:
        """Whole rows only: one call on the distinct completed texts."""
        keys: dict[tuple, int] = {}
        where = []
        for b in range(traj.batch_size):
            prompt = traj.row_prompt(b)
            if prompt not in self.inputs:
                raise GfnlmError(UNKNOWN_PROMPT)
            where.append(keys.setdefault((prompt, tuple(traj.row(b))), len(keys)))
        items = list(keys)
        values = self.call(self.tokenizer.batch_decode([list(z) for _, z in items]), [self.inputs[p] for p, _ in items])
        return torch.tensor([values[k] for k in where]).to(traj.tokens.device)

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
