"""Forward passes over [prompt X, latent Z, copies of the terminator] with explicit attention masks.

Every row of a batch usually shares its prompt with many others, so each distinct prompt is run
once and its key/value cache is gathered onto the rows that use it (with gradient, when the caller
tracks it: gradients flow back through the shared cache). All masks are boolean 4D masks built here
(True = may attend) with explicit position ids, so left padding and holes never depend on library
defaults. A query that would see no key at all (left padding) is allowed to see itself, which keeps
scaled-dot-product attention free of NaNs; such positions are never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache


@dataclass
class PromptCache:
    """Keys/values of each distinct prompt (left-padded to a common length)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (G, heads, P, dim)
    valid: torch.Tensor  # (G, P) True on real prompt tokens
    lengths: torch.Tensor  # (G,)
    last_logits: torch.Tensor  # (G, V) next-token logits after the whole prompt (state s_0)
    tail_logits: torch.Tensor  # (G, k, V) next-token logits after each of the prompts' last k tokens


def encode_prompts(model, prompts: Sequence[Sequence[int]], shared_prefix: Sequence[int] = (),
                   tail: int = 1) -> PromptCache:
    """Keys/values of each prompt. ``shared_prefix`` (e.g. few-shot examples) is read before every prompt
    but run only once: its cache is copied onto the prompts, which continue it after their left padding.
    ``tail``: how many of the last positions keep their logits (prompts are left-padded, so these are
    every prompt's last ``tail`` tokens)."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)
    for g, p in enumerate(prompts):
        ids[g, width - len(p) :] = torch.tensor(list(p), dtype=torch.long, device=device)
        valid[g, width - len(p) :] = True
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    mask = causal[None] & valid[:, None, :]
    mask = mask | torch.eye(width, dtype=torch.bool, device=device)[None]
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    cache = None
    if len(shared_prefix):
        head = encode_prompts(model, [shared_prefix])
        cache, _, _ = gather_rows(head, torch.zeros(len(prompts), dtype=torch.long, device=device))
        positions = positions + len(shared_prefix)
        mask = torch.cat([head.valid[:, None, :].expand(len(prompts), width, -1), mask], dim=-1)
        valid = torch.cat([head.valid.expand(len(prompts), -1), valid], dim=1)
    # Only the last positions' logits are needed: the vocabulary projection of every prompt token
    # would cost more than the prompt's transformer layers on a small model.
    out = model(input_ids=ids, attention_mask=mask[:, None], position_ids=positions, use_cache=True,
                cache=cache, logits_to_keep=tail)
    layers = [(layer.keys, layer.values) for layer in out.cache.layers]
    return PromptCache(layers, valid, valid.sum(-1), out.logits[:, -1], out.logits)


def gather_rows(prompt_cache: PromptCache, rows: torch.Tensor) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """A fresh cache holding, for each row, its prompt's keys/values; plus key validity and prompt lengths."""
    data = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in prompt_cache.layers]
    return DynamicCache(ddp_cache_data=data), prompt_cache.valid[rows], prompt_cache.lengths[rows]


def forward_new_tokens(
    model,
    cache: DynamicCache,
    key_valid: torch.Tensor,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    visible: torch.Tensor,
) -> torch.Tensor:
    """Run ``tokens`` (B, Q) after the cached keys. ``key_valid`` (B, K) says which cached keys exist;
    ``visible`` (Q, Q) or (B, Q, Q) says which new tokens each new token attends to. Returns logits (B, Q, V);
    the cache is extended in place."""
    batch, q = tokens.shape
    if visible.dim() == 2:
        visible = visible[None].expand(batch, q, q)
    visible = visible | torch.eye(q, dtype=torch.bool, device=tokens.device)[None]
    mask = torch.cat([key_valid[:, None, :].expand(batch, q, key_valid.shape[1]), visible], dim=-1)
    out = model(input_ids=tokens, attention_mask=mask[:, None], position_ids=positions, cache=cache, use_cache=True)
    return out.logits


def state_logits(model, prompt_cache: PromptCache, prompt_index: torch.Tensor, tokens: torch.Tensor,
                 continuation: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next-token logits at every state of every row, in one pass.

    Returns ``states`` (B, L+1, V): logits after X z_1..z_i for i = 0..L; and, when ``continuation``
    C has m > 1 tokens, ``copies`` (B, L+1, m-1, V): logits after X z_1..z_i C_1..C_j (j = 1..m-1),
    which give log p(C | X z_1..z_i) for every prefix i. The copies are packed after Z in the same
    sequence; copy i attends to the prompt, z_1..z_i and itself only, at the positions it would have.
    """
    batch, length = tokens.shape
    device = tokens.device
    extra = max(len(continuation) - 1, 0)
    cache, key_valid, prompt_len = gather_rows(prompt_cache, prompt_index)
    first = prompt_cache.last_logits.index_select(0, prompt_index)[:, None]
    copy_len = (length + 1) * extra
    if length + copy_len == 0:
        return first, None
    steps = torch.arange(length, device=device)
    # Layout: z_1..z_L, then for i = 0..L the copy C_1..C_{m-1} that continues state s_i.
    copy_state = torch.arange(length + 1, device=device).repeat_interleave(extra)  # which s_i each copy token follows
    copy_offset = torch.arange(extra, device=device).repeat(length + 1)  # j - 1 within its copy
    cont = torch.tensor(list(continuation[:extra]), dtype=torch.long, device=device)
    new_tokens = torch.cat([tokens, cont.repeat(length + 1)[None].expand(batch, copy_len)], dim=1)
    offsets = torch.cat([steps, copy_state + copy_offset])
    positions = prompt_len[:, None] + offsets[None]
    total = length + copy_len
    visible = torch.zeros(total, total, dtype=torch.bool, device=device)
    visible[:length, :length] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if extra:
        visible[length:, :length] = steps[None, :] < copy_state[:, None]
        same_copy = copy_state[:, None] == copy_state[None, :]
        visible[length:, length:] = same_copy & (copy_offset[None, :] <= copy_offset[:, None])
    logits = forward_new_tokens(model, cache, key_valid, new_tokens, positions, visible)
    states = torch.cat([first, logits[:, :length]], dim=1)
    copies = logits[:, length:].reshape(batch, length + 1, extra, -1) if extra else None
    return states, copies


def forward_some_rows(model, cache: DynamicCache, key_valid: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor,
                      positions: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``forward_new_tokens`` for the batch rows ``rows`` only (e.g. the few that received tool output this
    step), so the others do not pay for padding. The full cache gains the new columns; in the other rows
    they are zeros, which the caller marks as invalid keys. Returns logits (len(rows), Q, V)."""
    part = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, rows), layer.values.index_select(0, rows))
                                        for layer in cache.layers])
    logits = forward_new_tokens(model, part, key_valid.index_select(0, rows), tokens, positions, visible)
    for layer, new in zip(cache.layers, part.layers):
        for name in ("keys", "values"):
            old, grown = getattr(layer, name), getattr(new, name)
            columns = old.new_zeros(old.shape[0], old.shape[1], grown.shape[2] - old.shape[2], old.shape[3])
            columns[rows] = grown[:, :, old.shape[2]:]
            setattr(layer, name, torch.cat([old, columns], dim=2))
    return logits


@torch.no_grad()
def continuation_log_probs(model, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                           batch_size: int = 16, shared_prefix: Sequence[int] = (), progress: bool = False,
                           desc: str = "score") -> torch.Tensor:
    """log p(continuation_k | shared_prefix, context_k) for many pairs. Each distinct context is run once
    (e.g. one chain scored with several candidate answers) and its key/value cache is shared by the
    pairs that continue it; ``batch_size`` distinct contexts are run together. The leading tokens that
    every continuation shares (e.g. "The answer is") are run once per context, not once per pair."""
    device = next(model.parameters()).device
    lead = common_prefix(continuations)
    lead_ids = torch.tensor(lead, dtype=torch.long, device=device)
    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(c), len(distinct)) for c in contexts]
    unique = list(distinct)
    out = torch.zeros(len(contexts))
    for start in tqdm(range(0, len(unique), batch_size), desc=desc, disable=not progress, dynamic_ncols=True,
                      leave=False):
        rows = [r for r, i in enumerate(which) if start <= i < start + batch_size]
        index = torch.tensor([which[r] - start for r in rows], device=device)
        cache = encode_prompts(model, [c + lead for c in unique[start: start + batch_size]], shared_prefix,
                               tail=len(lead) + 1)
        lead_lp = torch.log_softmax(cache.tail_logits[:, :-1].float(), -1)
        lead_lp = lead_lp[:, torch.arange(len(lead)), lead_ids]
        out[rows] = lead_lp.sum(-1).index_select(0, index).cpu()
        # Rows run in groups of equal length: one long continuation does not pad all the others.
        by_length: dict[int, list[int]] = {}
        for b, r in enumerate(rows):
            by_length.setdefault(len(continuations[r]) - len(lead), []).append(b)
        for width, members in by_length.items():
            if width == 0:
                continue
            tokens = torch.tensor([list(continuations[rows[b]][len(lead):]) for b in members], device=device)
            states, _ = state_logits(model, cache, index[members], tokens)
            log_probs = torch.log_softmax(states[:, :-1].float(), -1).gather(-1, tokens[..., None]).squeeze(-1)
            out[[rows[b] for b in members]] += log_probs.sum(-1).cpu()
    return out


def common_prefix(sequences: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The longest run of leading tokens that every sequence shares."""
    if not sequences:
        return ()
    lead = tuple(sequences[0])
    for seq in sequences[1:]:
        n = 0
        while n < min(len(lead), len(seq)) and lead[n] == seq[n]:
            n += 1
        lead = lead[:n]
    return lead
