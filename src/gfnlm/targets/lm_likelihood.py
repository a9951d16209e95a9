"""log p_LM(Z stop | X) of every prefix under the base model (the policy with its adapter disabled)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gfnlm.core.lm_forward import encode_prompts, visited_state_logits
from gfnlm.core.trajectories import Trajectories
from gfnlm.model.policy import Policy
from gfnlm.targets.base import Target


class LMLikelihood(Target):
    """R(z_1..z_i stop) = p_LM(z_1..z_i T | X), for all i in one forward pass.

    With a one-token terminator T the logits of [X, Z] give every prefix at once; with a longer T
    (or an answer appended after Z) the copies of T are packed into the same pass.
    ``renormalize_over``: an optional vocabulary bias (0 allowed / -inf banned); when given, each
    next-token distribution of the LM is renormalized over the allowed tokens (the paper's
    "masked LM" reward). Without it the target is p_LM restricted to the policy's support.
    ``context_prefix``: text the reward model reads before every prompt (e.g. worked examples) that the
    policy does not see.
    """

    def __init__(self, policy: Policy, terminator: Sequence[int], renormalize_over: torch.Tensor | None = None,
                 chunk_size: int = 64, context_prefix: Sequence[int] = ()):
        self.policy = policy
        self.context_prefix = [int(t) for t in context_prefix]
        self.terminator = [int(t) for t in terminator]
        self.bias = renormalize_over
        self.chunk_size = chunk_size

    @torch.no_grad()
    def log_rewards(self, traj: Trajectories) -> torch.Tensor:
        return self._in_chunks(traj, self._score)

    def _in_chunks(self, traj: Trajectories, score) -> torch.Tensor:
        """``score`` of every chunk of ``chunk_size`` rows, each padded with zeros along the prefix axis
        (dim 1) to the batch's L+1, concatenated along the rows."""
        parts = []
        for start in range(0, traj.batch_size, self.chunk_size):
            rows = torch.arange(start, min(start + self.chunk_size, traj.batch_size), device=traj.tokens.device)
            part = score(traj.select(rows))
            pad = [0, 0] * (part.dim() - 2) + [0, traj.max_length + 1 - part.shape[1]]
            parts.append(torch.nn.functional.pad(part, pad))
        return torch.cat(parts, dim=0)

    def _score(self, traj: Trajectories) -> torch.Tensor:
        return self._score_with(traj, self.terminator)

    def _score_with(self, traj: Trajectories, terminator: list[int]) -> torch.Tensor:
        with self.policy.base() as model:
            prefix, stop = self._prefix_and_stop(model, traj, terminator)
        return prefix + stop

    def _prefix_and_stop(self, model, traj: Trajectories, terminator: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L+1) log p(z_1..z_i | X) and log p(terminator | X z_1..z_i) of every prefix under ``model``."""
        cache = encode_prompts(model, traj.prompts, self.context_prefix)
        states = visited_state_logits(model, cache, traj.prompt_index, traj.tokens, terminator, traj.lengths)
        log_probs = self._log_softmax(states.logits)  # (N, V): one row per visited state
        batch, length = traj.tokens.shape
        token_lp = log_probs.gather(-1, states.next_token[:, None]).squeeze(-1)
        token_lp = states.dense(torch.where(states.has_next, token_lp, torch.zeros_like(token_lp)), batch, length)
        prefix = torch.cat([token_lp.new_zeros(batch, 1), token_lp[:, :length].cumsum(-1)], dim=1)
        stop = log_probs[:, terminator[0]]
        for j in range(1, len(terminator)):
            stop = stop + self._log_softmax(states.copies[:, j - 1])[:, terminator[j]]
        return prefix, states.dense(stop, batch, length)

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.bias is not None:
            logits = logits + self.bias.to(logits.device)
        return torch.log_softmax(logits, dim=-1)


class PromptAnswerLikelihood(LMLikelihood):
    """R(z_1..z_i stop) = p_LM(z_1..z_i Y | X) = p_LM(X z_1..z_i Y) / p_LM(X), with an answer Y that
    depends on the prompt (``answers``: prompt key -> token ids). The policy's own stop token is not
    part of the scored text: stopping means "append Y". Each distinct answer is scored for every prefix
    of its rows in one packed pass (the copies of Y ride after Z, as for multi-token terminators)."""

    def __init__(self, policy: Policy, answers: dict[str, Sequence[int]], renormalize_over: torch.Tensor | None = None,
                 chunk_size: int = 64, context_prefix: Sequence[int] = ()):
        if any(len(a) == 0 for a in answers.values()):
            raise ValueError("every answer needs at least one token")
        super().__init__(policy, [0], renormalize_over, chunk_size, context_prefix)
        self.answers = {k: [int(t) for t in v] for k, v in answers.items()}

    def _score(self, traj: Trajectories) -> torch.Tensor:
        out = torch.zeros(traj.batch_size, traj.max_length + 1, device=traj.tokens.device)
        keys = [traj.row_key(b) for b in range(traj.batch_size)]
        for key in dict.fromkeys(keys):
            if key not in self.answers:
                raise KeyError(f"no answer for prompt {key!r}")
            rows = torch.tensor([b for b, k in enumerate(keys) if k == key], device=traj.tokens.device)
            part = self._score_with(traj.select(rows), self.answers[key])
            out[rows, : part.shape[1]] = part.to(out.dtype)
        return out
