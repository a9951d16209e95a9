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


# New tokens per packed sequence: enough rows to fill the matmuls, few enough that attention over the pack
# (quadratic in its length, and mostly masked) stays a small part of the cost.
PACK_TOKENS = 256


@dataclass
class VisitedStates:
    """Next-token logits at every state a batch visits, one row per state (b, i), i = 0..n_b."""

    logits: torch.Tensor  # (N, V) after X z_1..z_i
    copies: torch.Tensor | None  # (N, m-1, V) after X z_1..z_i C_1..C_j, j = 1..m-1
    row: torch.Tensor  # (N,) b
    index: torch.Tensor  # (N,) i
    next_token: torch.Tensor  # (N,) z_{i+1} (0 at a row's last state)
    has_next: torch.Tensor  # (N,) i < n_b

    def dense(self, values: torch.Tensor, batch: int, length: int) -> torch.Tensor:
        """(B, L+1, ...) with ``values`` (N, ...) at the visited states and zeros elsewhere."""
        out = values.new_zeros(batch, length + 1, *values.shape[1:])
        return out.index_put((self.row, self.index), values)


def visited_state_logits(model, prompt_cache: PromptCache, prompt_index: torch.Tensor, tokens: torch.Tensor,
                         continuation: Sequence[int] = (), lengths: torch.Tensor | None = None,
                         pack_tokens: int = PACK_TOKENS) -> VisitedStates:
    """Next-token logits at every state s_0..s_{n_b} of every row, in one pass; and, when ``continuation``
    C has m > 1 tokens, the logits after each state followed by C_1..C_j (which give log p(C | X z_1..z_i)
    for every prefix i). ``lengths`` (B,): row b has only its first lengths[b] tokens (default: all L).

    Rows are packed: the rows of one prompt are laid end to end in one sequence of at most ``pack_tokens``
    new tokens (a longer row gets a sequence of its own), so padding costs nothing. Each row is
    z_1..z_n followed by n+1 copies of C_1..C_{m-1}, copy i continuing state s_i; a token attends to its
    prompt and, within its own row, to z_1..z_i and its own copy only, at the positions it would have alone.
    """
    batch, length = tokens.shape
    device = tokens.device
    extra = max(len(continuation) - 1, 0)
    lengths = torch.full((batch,), length, device=device) if lengths is None else lengths.to(device)
    rows = torch.arange(batch, device=device)
    first = prompt_cache.last_logits.index_select(0, prompt_index)
    packs = pack_rows(prompt_index.tolist(), (lengths + (lengths + 1) * extra).tolist(), pack_tokens)
    if not packs:
        copies = first.new_zeros(batch, extra, first.shape[-1]) if extra else None
        return VisitedStates(first, copies, rows, torch.zeros_like(rows), torch.zeros_like(rows),
                             torch.zeros_like(rows, dtype=torch.bool))
    layout = PackLayout.build(packs, tokens, lengths, list(continuation[:extra]))
    pack_group = torch.tensor([int(prompt_index[members[0]]) for members in packs], device=device)
    cache, key_valid, prompt_len = gather_rows(prompt_cache, pack_group)
    logits = forward_new_tokens(model, cache, key_valid, layout.ids, prompt_len[:, None] + layout.offsets,
                                layout.visible())
    logits = logits.reshape(-1, logits.shape[-1])
    z_index = layout.real(layout.z_index)
    is_z = z_index >= 0
    # States s_0 (after the prompt) first, then s_{j+1} (after z_{j+1}) in pack order.
    row = torch.cat([rows, layout.row[is_z]])
    index = torch.cat([torch.zeros_like(rows), z_index[is_z] + 1])
    states = torch.cat([first, logits.index_select(0, layout.position[is_z])])
    has_next = index < lengths[row]
    next_token = tokens[row, index.clamp(max=length - 1)] if length else torch.zeros_like(row)
    next_token = torch.where(has_next, next_token, torch.zeros_like(next_token))
    copies = None
    if extra:
        where = torch.zeros(batch, length + 1, extra, dtype=torch.long, device=device)
        copy = ~is_z
        where[layout.row[copy], layout.real(layout.copy_state)[copy], layout.real(layout.copy_offset)[copy]] = \
            layout.position[copy]
        copies = logits[where[row, index]]
    return VisitedStates(states, copies, row, index, next_token, has_next)


def state_logits(model, prompt_cache: PromptCache, prompt_index: torch.Tensor, tokens: torch.Tensor,
                 continuation: Sequence[int] = (), lengths: torch.Tensor | None = None,
                 pack_tokens: int = PACK_TOKENS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``visited_state_logits`` laid out as ``states`` (B, L+1, V) and, when C has m > 1 tokens,
    ``copies`` (B, L+1, m-1, V); states past a row's end are zeros."""
    batch, length = tokens.shape
    visited = visited_state_logits(model, prompt_cache, prompt_index, tokens, continuation, lengths, pack_tokens)
    states = visited.dense(visited.logits, batch, length)
    copies = None if visited.copies is None else visited.dense(visited.copies, batch, length)
    return states, copies


def pack_rows(groups: list[int], sizes: list[int], capacity: int) -> list[list[int]]:
    """Rows of the same group in packs of at most ``capacity`` tokens (first fit, longest rows first; a row
    longer than the capacity gets a pack of its own). Rows of size 0 are left out."""
    packs: list[list[int]] = []
    for group in dict.fromkeys(groups):
        rows = sorted((b for b, g in enumerate(groups) if g == group and sizes[b] > 0), key=lambda b: -sizes[b])
        open_packs: list[tuple[int, list[int]]] = []  # (free tokens, rows)
        for b in rows:
            for i, (free, members) in enumerate(open_packs):
                if sizes[b] <= free:
                    members.append(b)
                    open_packs[i] = (free - sizes[b], members)
                    break
            else:
                open_packs.append((max(capacity - sizes[b], 0), [b]))
        packs.extend(members for _, members in open_packs)
    return packs


@dataclass
class PackLayout:
    """Where every new token of every row sits: (P, W) tensors over the packs, W the longest pack."""

    ids: torch.Tensor
    offsets: torch.Tensor  # position after the prompt
    member: torch.Tensor  # which row of the pack (-1: padding)
    z_index: torch.Tensor  # j for token z_{j+1}; -1 for copy tokens
    copy_state: torch.Tensor  # i for a copy continuing s_i; -1 for z tokens
    copy_offset: torch.Tensor  # j - 1 for copy token C_j
    position: torch.Tensor  # (T,) over all real tokens (in pack order): pack x W + place in the pack,
    row: torch.Tensor  # and each one's row

    def real(self, values: torch.Tensor) -> torch.Tensor:
        """(T,) ``values`` (one of the (P, W) fields) at the real tokens, in the order of ``position``."""
        return values[self.member >= 0]

    @staticmethod
    def build(packs: list[list[int]], tokens: torch.Tensor, lengths: torch.Tensor,
              continuation: list[int]) -> PackLayout:
        device = tokens.device
        extra = len(continuation)
        cont = torch.tensor(continuation, dtype=torch.long, device=device)
        names = ("ids", "offsets", "member", "z", "state", "off")
        columns: dict[str, list[torch.Tensor]] = {k: [] for k in names}
        pack_of, place, row = [], [], []
        for p, members in enumerate(packs):
            parts = {k: [] for k in columns}
            used = 0
            for m, b in enumerate(members):
                n = int(lengths[b])
                steps = torch.arange(n, device=device)
                copy_state = torch.arange(n + 1, device=device).repeat_interleave(extra)
                copy_offset = torch.arange(extra, device=device).repeat(n + 1)
                size = n + (n + 1) * extra
                parts["ids"] += [tokens[b, :n], cont.repeat(n + 1)]
                parts["offsets"] += [steps, copy_state + copy_offset]
                parts["member"].append(torch.full((size,), m, device=device))
                parts["z"] += [steps, torch.full(((n + 1) * extra,), -1, device=device)]
                parts["state"] += [torch.full((n,), -1, device=device), copy_state]
                parts["off"] += [torch.zeros(n, dtype=torch.long, device=device), copy_offset]
                pack_of.append(torch.full((size,), p, device=device))
                place.append(used + torch.arange(size, device=device))
                row.append(torch.full((size,), b, device=device))
                used += size
            for k in columns:
                columns[k].append(torch.cat(parts[k]))
        width = max(int(c.shape[0]) for c in columns["ids"])

        def padded(key: str, fill: int) -> torch.Tensor:
            out = torch.full((len(packs), width), fill, dtype=torch.long, device=device)
            for p, values in enumerate(columns[key]):
                out[p, : len(values)] = values
            return out

        return PackLayout(padded("ids", 0), padded("offsets", 0), padded("member", -1), padded("z", -1),
                          padded("state", -1), padded("off", 0), torch.cat(pack_of) * width + torch.cat(place),
                          torch.cat(row))

    def visible(self) -> torch.Tensor:
        """(P, W, W): query token t may attend to key token u of the same pack."""
        q = {k: v[:, :, None] for k, v in self._fields().items()}
        k = {k: v[:, None, :] for k, v in self._fields().items()}
        same_row = (q["member"] == k["member"]) & (q["member"] >= 0)
        z_q, z_k = q["z"] >= 0, k["z"] >= 0
        z_sees_z = z_q & z_k & (k["z"] <= q["z"])
        copy_sees_z = ~z_q & z_k & (k["z"] < q["state"])
        copy_sees_copy = ~z_q & ~z_k & (k["state"] == q["state"]) & (k["off"] <= q["off"])
        return same_row & (z_sees_z | copy_sees_z | copy_sees_copy)

    def _fields(self) -> dict[str, torch.Tensor]:
        return {"member": self.member, "z": self.z_index, "state": self.copy_state, "off": self.copy_offset}


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
