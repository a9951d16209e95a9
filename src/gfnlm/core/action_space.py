"""Which tokens the policy may take in each state, shared by the sampler and the loss.

Termination is a token sequence T (often one token). A trajectory ends at the first occurrence of T;
Z is everything before it. The rules below act on the raw token stream (Z plus any partially written
T), so the sampler and the trainer's recomputation of log-probabilities agree exactly:

- vocabulary mask: banned tokens never appear (T is always allowed);
- min_len: the token that would complete T is banned while Z would be shorter than min_len;
- max_len: once the stream has max_len tokens, only the next token of T may follow (the stop is forced);
- stop_after_insert (one-token T only): the policy may stop only right after tokens the environment
  inserted (a tool's answer), so Z is a whole chain of tool calls; callers pass ``after_insert``.

A state s_i (Z = z_1..z_i) is *terminable* when stopping there is possible: i >= min_len and writing T
after it first completes T at its last token (for multi-token T, a suffix of Z plus a prefix of T can
complete T earlier; that stop belongs to an earlier state).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from gfnlm.infra.errors import GfnlmError

NEG_INF = float("-inf")


def match_automaton(pattern: Sequence[int], vocab_size: int) -> torch.Tensor:
    """(m+1, V) transitions of the Knuth-Morris-Pratt automaton that tracks how much of ``pattern``
    the stream currently ends with; state m means the pattern was just completed."""
    m = len(pattern)
    table = torch.zeros(m + 1, vocab_size, dtype=torch.long)
    table[0, pattern[0]] = 1
    fallback = 0
    for state in range(1, m + 1):
        table[state] = table[fallback]
        if state < m:
            table[state, pattern[state]] = state + 1
            fallback = int(table[fallback, pattern[state]])
    return table


LINE_BREAKS = ("\n", "\r", "\t")


def banned_sentence_tokens(tokenizer, vocab_size: int, terminator: str, terminator_ids: list[int],
                           banned_strings: Sequence[str] = LINE_BREAKS, allowed_chars: str = "") -> list[int]:
    """Tokens that cannot occur inside a sentence: special tokens, tokens that decode to nothing, any token that
    contains the terminator text without being the terminator (so sentences end only at it), tokens that
    contain one of ``banned_strings`` (by default line breaks and tabs) and, when ``allowed_chars`` is given,
    tokens with any other character."""
    allowed_terminator = set(terminator_ids) if len(terminator_ids) == 1 else set()
    allowed = set(allowed_chars)
    banned = set(tokenizer.all_special_ids)
    pieces = tokenizer.batch_decode([[i] for i in range(min(vocab_size, len(tokenizer)))])
    for i in range(vocab_size):
        piece = pieces[i] if i < len(pieces) else ""
        if (not piece or any(s in piece for s in banned_strings) or (allowed and not set(piece) <= allowed)
                or (terminator in piece and i not in allowed_terminator)):
            banned.add(i)
    banned -= set(terminator_ids)
    return sorted(banned)


class ActionSpace:
    def __init__(
        self,
        vocab_size: int,
        terminator: Sequence[int],
        min_len: int = 0,
        max_len: int = 20,
        banned_tokens: Iterable[int] | None = None,
        allowed_tokens: Iterable[int] | None = None,
        stop_after_insert: bool = False,
    ):
        terminator = [int(t) for t in terminator]
        if not terminator:
            raise GfnlmError("The terminator is empty; give at least one token.")
        if stop_after_insert and len(terminator) != 1:
            raise GfnlmError("stop_after_insert needs a one-token terminator.")
        self.stop_after_insert = stop_after_insert
        if any(t < 0 or t >= vocab_size for t in terminator):
            raise GfnlmError(f"Terminator token ids {terminator} are outside the vocabulary (size {vocab_size}).")
        if min_len < 0 or max_len < 1:
            raise GfnlmError(f"min_len must be >= 0 and max_len >= 1 (got {min_len}, {max_len}).")
        m = len(terminator)
        if min_len > max_len - m + 1:
            raise GfnlmError(
                f"min_len {min_len} is larger than max_len {max_len} allows for a {m}-token terminator; "
                f"use min_len <= {max_len - m + 1}."
            )
        self.vocab_size = vocab_size
        self.terminator = terminator
        self.min_len = min_len
        self.max_len = max_len
        bias = torch.zeros(vocab_size)
        if allowed_tokens is not None:
            bias.fill_(NEG_INF)
            bias[torch.tensor(sorted(set(int(t) for t in allowed_tokens)), dtype=torch.long)] = 0.0
        if banned_tokens is not None:
            banned = sorted(set(int(t) for t in banned_tokens))
            if banned:
                bias[torch.tensor(banned, dtype=torch.long)] = NEG_INF
        bias[torch.tensor(terminator)] = 0.0
        if int(torch.isfinite(bias).sum()) < 2:
            raise GfnlmError("The vocabulary mask leaves no token besides the terminator; allow more tokens.")
        self.vocab_bias = bias
        self.automaton = match_automaton(terminator, vocab_size)
        self.terminator_tensor = torch.tensor(terminator, dtype=torch.long)
        # clean_stop[k]: from match state k, writing T first completes it at T's last token.
        self.clean_stop = torch.tensor([self._completes_cleanly(k) for k in range(m)], dtype=torch.bool)

    @property
    def terminator_length(self) -> int:
        return len(self.terminator)

    def _completes_cleanly(self, state: int) -> bool:
        for j, tok in enumerate(self.terminator):
            state = int(self.automaton[state, tok])
            if state == len(self.terminator):
                return j == len(self.terminator) - 1
        return False

    def to(self, device: torch.device | str) -> ActionSpace:
        for name in ("vocab_bias", "automaton", "terminator_tensor", "clean_stop"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def masked_logits(self, logits: torch.Tensor, stream_len: torch.Tensor, match: torch.Tensor,
                      after_insert: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (float32) with -inf on every token not allowed after a stream of ``stream_len`` tokens
        whose end matches ``match`` tokens of T (and, with stop_after_insert, whose last token was
        inserted: ``after_insert``). Shapes: logits (..., V); stream_len, match, after_insert (...)."""
        m = self.terminator_length
        x = logits.float() + self.vocab_bias
        vocab = torch.arange(self.vocab_size, device=logits.device)
        capped = stream_len >= self.max_len
        too_short = (match == m - 1) & (stream_len + 1 - m < self.min_len)
        if self.stop_after_insert and after_insert is not None:
            too_short = too_short | (~after_insert & ~capped)
        # In place: x is this function's own tensor (one vocabulary-sized copy instead of three).
        x.masked_fill_(too_short[..., None] & (vocab == self.terminator[-1]), NEG_INF)
        if bool(capped.any()):
            forced = self.terminator_tensor[match.clamp(max=m - 1)]
            x.masked_fill_(capped[..., None] & (vocab != forced[..., None]), NEG_INF)
        return x

    def log_probs(self, logits: torch.Tensor, stream_len: torch.Tensor, match: torch.Tensor,
                  after_insert: torch.Tensor | None = None) -> torch.Tensor:
        return torch.log_softmax(self.masked_logits(logits, stream_len, match, after_insert), dim=-1)

    def match_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L+1) automaton state after each prefix z_1..z_i of ``tokens`` (B, L)."""
        states = [torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)]
        for i in range(tokens.shape[1]):
            states.append(self.automaton[states[-1], tokens[:, i]])
        return torch.stack(states, dim=1)

    def structurally_terminable(self, match: torch.Tensor, state_index: torch.Tensor,
                                after_insert: torch.Tensor | None = None) -> torch.Tensor:
        """Whether stopping at a state is possible by the length, overlap and insertion rules (same shapes)."""
        ok = (state_index >= self.min_len) & self.clean_stop[match.clamp(max=self.terminator_length - 1)] & (
            match < self.terminator_length
        )
        if self.stop_after_insert and after_insert is not None:
            ok = ok & (after_insert | (state_index >= self.max_len))
        return ok
