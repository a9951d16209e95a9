"""log p_LM(text | context) of every prefix of Z, where Z sits inside the text or inside the context.

A posterior's LM terms read Z between pieces of fixed text: log p(Z . | X) (Z in the text), log p(Y | X Z)
(Z in the context), log p(X Z Y) (the whole sequence). Each is one token sequence ``before + Z + after``
of which a part is scored:

    score(z_1..z_i) = log p(before[scored_before:] | before[:scored_before])       (a constant per prompt)
                      + [score_z] log p(z_1..z_i | before)
                      + log p(after[scored_after:] | before z_1..z_i after[:scored_after])

All prefixes of a row come from one forward pass: the copies of ``after`` ride behind Z, packed as the
multi-token terminators are (``core.lm_forward.state_logits``). Rows are matched to their pieces by the
policy's prompt tokens, so the same target serves training, evaluation and IS/SMC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gfnlm.core.lm_forward import continuation_log_probs, encode_prompts, state_logits
from gfnlm.core.trajectories import Trajectories
from gfnlm.infra.errors import GfnlmError
from gfnlm.targets.base import Target
from gfnlm.targets.text_function import UNKNOWN_PROMPT


@dataclass(frozen=True)
class Pieces:
    """The token sequence around Z for one prompt, and which parts of it are scored."""

    before: tuple[int, ...]
    after: tuple[int, ...]
    scored_before: int  # tokens of ``before`` from this index on are scored
    score_z: bool
    scored_after: int  # tokens of ``after`` from this index on are scored


class TextLikelihood(Target):
    """``pieces``: the policy's prompt tokens -> Pieces. ``model_context``: a callable returning a context
    manager that yields the scoring model (``policy.base`` for the base model with the adapter off).
    ``renormalize_over``: a vocabulary bias (0 allowed / -inf banned) applied where the policy writes (Z's
    tokens and the token right after Z), as the masked-LM reward of the paper."""

    def __init__(self, model_context: Callable, pieces: dict[tuple[int, ...], Pieces],
                 renormalize_over: torch.Tensor | None = None, chunk_size: int = 64):
        self.model_context = model_context
        self.pieces = {tuple(k): v for k, v in pieces.items()}
        self.bias = renormalize_over
        self.chunk_size = chunk_size
        self._constants: dict[Pieces, float] = {}

    def pieces_of(self, prompt: Sequence[int]) -> Pieces:
        try:
            return self.pieces[tuple(prompt)]
        except KeyError:
            raise GfnlmError(UNKNOWN_PROMPT) from None

    @torch.no_grad()
    def log_rewards(self, traj: Trajectories) -> torch.Tensor:
        out = torch.zeros(traj.batch_size, traj.max_length + 1, device=traj.tokens.device)
        row_pieces = [self.pieces_of(traj.row_prompt(b)) for b in range(traj.batch_size)]
        with self.model_context() as model:
            groups: dict[tuple, list[int]] = {}
            for b, p in enumerate(row_pieces):  # one pass per distinct text after Z and per scored part
                groups.setdefault((p.after, p.score_z, p.scored_after), []).append(b)
            for (after, score_z, scored_after), members in groups.items():
                for start in range(0, len(members), self.chunk_size):
                    rows = members[start: start + self.chunk_size]
                    part = self._score(model, traj, rows, [row_pieces[b] for b in rows], after, score_z, scored_after)
                    out[rows, : part.shape[1]] = part.to(out.dtype)
            constants = [self._constant(model, p) for p in row_pieces]
        return out + torch.tensor(constants, device=out.device)[:, None]

    @torch.no_grad()
    def terminal_log_rewards(self, traj: Trajectories, twist: bool = False) -> torch.Tensor:
        """Whole rows only: one pass over before + Z + after per row instead of a copy of ``after`` behind
        every prefix (what evaluation, IS and SMC need; much cheaper when ``after`` is long)."""
        row_pieces = [self.pieces_of(traj.row_prompt(b)) for b in range(traj.batch_size)]
        out = torch.zeros(traj.batch_size, dtype=torch.float64)
        with self.model_context() as model:
            for start in range(0, traj.batch_size, self.chunk_size):
                rows = list(range(start, min(start + self.chunk_size, traj.batch_size)))
                out[rows] = self._score_whole(model, traj, rows, [row_pieces[b] for b in rows])
            constants = [self._constant(model, p) for p in row_pieces]
        return (out + torch.tensor(constants, dtype=torch.float64)).float().to(traj.tokens.device)

    def _score_whole(self, model, traj: Trajectories, rows: list[int], pieces: list[Pieces]) -> torch.Tensor:
        device = traj.tokens.device
        sequences = [traj.row(b) + list(p.after) for b, p in zip(rows, pieces)]
        width = max(len(seq) for seq in sequences)
        tokens = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for i, seq in enumerate(sequences):
            tokens[i, : len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
        befores = list(dict.fromkeys(p.before for p in pieces))
        index = torch.tensor([befores.index(p.before) for p in pieces], device=device)
        seq_lengths = torch.tensor([len(seq) for seq in sequences], device=device)
        states, _ = state_logits(model, encode_prompts(model, befores), index, tokens, lengths=seq_lengths)
        states = states[:, :-1].float()  # states[:, k] predicts tokens[:, k]
        picked = states.gather(-1, tokens[..., None]).squeeze(-1)
        plain = picked - torch.logsumexp(states, -1)
        biased = plain if self.bias is None else picked - torch.logsumexp(states + self.bias.to(states.device), -1)
        out = torch.zeros(len(rows), dtype=torch.float64)
        for i, (b, p) in enumerate(zip(rows, pieces)):
            z = int(traj.lengths[b])
            total = biased[i, :z].sum() if p.score_z else 0.0
            for j in range(p.scored_after, len(p.after)):
                total = total + (biased if j == 0 else plain)[i, z + j]
            out[i] = float(total)
        return out

    def _score(self, model, traj: Trajectories, rows: list[int], pieces: list[Pieces], after: tuple[int, ...],
               score_z: bool, scored_after: int) -> torch.Tensor:
        sub = traj.select(torch.tensor(rows, device=traj.tokens.device))
        befores = list(dict.fromkeys(p.before for p in pieces))
        index = torch.tensor([befores.index(p.before) for p in pieces], device=sub.tokens.device)
        cache = encode_prompts(model, befores)
        states, copies = state_logits(model, cache, index, sub.tokens, after, sub.lengths)
        log_probs = self._log_softmax(states)
        total = torch.zeros(sub.batch_size, sub.max_length + 1, device=states.device)
        if score_z:
            token_lp = log_probs[:, :-1].gather(-1, sub.tokens[..., None]).squeeze(-1)
            token_lp = torch.where(sub.state_mask()[:, 1:], token_lp, torch.zeros_like(token_lp))
            total[:, 1:] = token_lp.cumsum(-1)
        for j in range(scored_after, len(after)):
            step = log_probs if j == 0 else torch.log_softmax(copies[:, :, j - 1].float(), -1)
            total = total + step[..., after[j]]
        return total

    def _constant(self, model, pieces: Pieces) -> float:
        """log p(before[scored_before:] | before[:scored_before]), once per distinct sequence."""
        if pieces not in self._constants:
            head, scored = pieces.before[: pieces.scored_before], pieces.before[pieces.scored_before:]
            value = 0.0
            if scored:
                # the first token has no context to be predicted from when nothing precedes it
                context, scored = (head, scored) if head else (scored[:1], scored[1:])
                if scored:
                    value = float(continuation_log_probs(model, [context], [scored])[0])
            self._constants[pieces] = value
        return self._constants[pieces]

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.bias is not None:
            logits = logits + self.bias.to(logits.device)
        return torch.log_softmax(logits, dim=-1)
