"""Batched, KV-cached rollouts of the policy (or of the base model) under an action space.

Each distinct prompt is encoded once; its cache is shared by the rows that continue it. Exploration:
a sampling temperature and epsilon-uniform mixing over the allowed tokens (the behaviour policy only;
the loss always uses the untempered policy). An optional insert hook may splice tokens into a row
after any policy token (tool output): they are recorded as non-policy tokens, fed through the same
KV cache, and reproduced exactly when the trajectory is replayed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from gfnlm.core.action_space import ActionSpace
from gfnlm.core.lm_forward import encode_prompts, forward_new_tokens, forward_some_rows, gather_rows
from gfnlm.core.trajectories import Trajectories
from gfnlm.infra.seeding import generator_device
from gfnlm.model.decoding_weights import decoding_weights

FOLD_MIN_STEPS = 8  # sampling runs on folded weights when a rollout may be longer than this (tokens)

# insert_hook(row, stream) -> tokens to splice after the policy's latest token (or an empty list).
InsertHook = Callable[[int, list[int]], Sequence[int]]


def behaviour_probs(masked_logits: torch.Tensor, temperature: float, epsilon: float) -> torch.Tensor:
    """softmax(logits / temperature), mixed with the uniform distribution over allowed tokens."""
    probs = torch.softmax(masked_logits / temperature, dim=-1)
    if epsilon > 0:
        allowed = torch.isfinite(masked_logits).float()
        probs = (1 - epsilon) * probs + epsilon * allowed / allowed.sum(-1, keepdim=True)
    return probs


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row by inverting the cumulative distribution (faster than multinomial on a
    large vocabulary, and reproducible through ``generator``). Probabilities below float32's smallest
    normal number count as 0: a 53-bit uniform could never pick them, and their subnormal arithmetic
    made the cumulative sum about ten times slower."""
    probs = probs.masked_fill(probs < torch.finfo(torch.float32).tiny, 0.0)
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=generator_device(generator, probs),
                   dtype=torch.float64).to(probs.device)
    picks = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return picks.squeeze(1).clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def sample_trajectories(
    model,
    action_space: ActionSpace,
    prompts: Sequence[Sequence[int]],
    prompt_keys: Sequence[str],
    prompt_index: torch.Tensor,
    temperature: float = 1.0,
    epsilon: float = 0.0,
    generator: torch.Generator | None = None,
    insert_hook: InsertHook | None = None,
    shared_prefix: Sequence[int] = (),
) -> Trajectories:
    """Sample one trajectory per entry of ``prompt_index`` (indices into ``prompts``). ``shared_prefix``
    is read before every prompt (run once; e.g. few-shot examples) and is not part of the trajectories."""
    if temperature <= 0:
        raise ValueError("the sampling temperature must be positive")
    device = next(model.parameters()).device
    prompt_index = prompt_index.to(device)
    batch = prompt_index.shape[0]
    m = action_space.terminator_length
    # Folding writes every weight once, about what 4-6 decoding steps spend on the unfolded adapter: worth it
    # for rollouts that may run longer than that.
    fold = action_space.max_len + m > FOLD_MIN_STEPS
    with decoding_weights(model) if fold else contextlib.nullcontext():
        prompt_cache = encode_prompts(model, prompts, shared_prefix)
        cache, key_valid, next_position = gather_rows(prompt_cache, prompt_index)
        next_position = next_position.clone()
        logits = prompt_cache.last_logits.index_select(0, prompt_index)
        streams: list[list[int]] = [[] for _ in range(batch)]
        from_policy: list[list[bool]] = [[] for _ in range(batch)]
        match = torch.zeros(batch, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        after_insert = torch.zeros(batch, dtype=torch.bool, device=device)  # the row's last token was inserted

        while True:
            stream_len = torch.tensor([len(s) for s in streams], device=device)
            masked = action_space.masked_logits(logits, stream_len, match, after_insert)
            tokens = draw(behaviour_probs(masked, temperature, epsilon), generator)
            chunks: list[list[int]] = []
            for b in range(batch):
                if done[b]:
                    chunks.append([])
                    continue
                chunk = [int(tokens[b])]
                streams[b].append(chunk[0])
                from_policy[b].append(True)
                state = int(action_space.automaton[match[b], chunk[0]])
                if state < m and insert_hook is not None:
                    for tok in insert_hook(b, list(streams[b])):
                        streams[b].append(int(tok))
                        from_policy[b].append(False)
                        chunk.append(int(tok))
                        state = int(action_space.automaton[state, int(tok)])
                        if state == m:
                            break
                match[b] = state
                done[b] = state == m
                after_insert[b] = len(chunk) > 1
                chunks.append(chunk)
            if bool(done.all()):
                break
            # Feed every unfinished row its policy token (finished rows get padding that nothing attends to);
            # the rows that also received tool output feed it in a second pass of their own, so one long
            # insertion does not pad the whole batch.
            active = ~done
            feed = torch.tensor([c[0] if c else 0 for c in chunks], dtype=torch.long, device=device)[:, None]
            out = forward_new_tokens(model, cache, key_valid, feed, next_position[:, None], active[:, None, None])
            key_valid = torch.cat([key_valid, active[:, None]], dim=1)
            next_position = next_position + active.long()
            logits = out[:, 0]
            extra = [b for b, (c, d) in enumerate(zip(chunks, done.tolist())) if not d and len(c) > 1]
            if extra:
                rows = torch.tensor(extra, device=device)
                width = max(len(chunks[b]) - 1 for b in extra)
                feed = torch.zeros(len(extra), width, dtype=torch.long, device=device)
                feed_valid = torch.zeros(len(extra), width, dtype=torch.bool, device=device)
                for i, b in enumerate(extra):
                    feed[i, : len(chunks[b]) - 1] = torch.tensor(chunks[b][1:], device=device)
                    feed_valid[i, : len(chunks[b]) - 1] = True
                positions = next_position[rows, None] + torch.arange(width, device=device)[None]
                causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
                visible = causal[None] & feed_valid[:, None, :]
                out = forward_some_rows(model, cache, key_valid, rows, feed, positions, visible)
                column_valid = torch.zeros(batch, width, dtype=torch.bool, device=device)
                column_valid[rows] = feed_valid
                key_valid = torch.cat([key_valid, column_valid], dim=1)
                count = feed_valid.sum(1)
                next_position[rows] += count
                logits[rows] = out[torch.arange(len(extra), device=device), count - 1]

    rows = [s[: len(s) - m] for s in streams]
    masks = [p[: len(p) - m] for p in from_policy]
    return Trajectories.from_rows(prompts, prompt_keys, prompt_index.tolist(), rows, masks, device=device)
