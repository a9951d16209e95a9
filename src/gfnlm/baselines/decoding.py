"""Decoding baselines under the same action space as the policy, N completions per prompt.

greedy, beam search and nucleus sampling run through transformers' ``generate`` with a logits
processor that applies the ActionSpace (banned tokens, min/max length, forced terminator), so every
method samples from the same support. Plain and token-tempered sampling use the project's sampler
(the exact q whose log-probabilities the importance estimates need). Diverse beam search is written
here: transformers 5 moved group beam search to a hub repository, which cannot be fetched offline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from gfnlm.core.action_space import ActionSpace
from gfnlm.inference.sampling import sample_completions
from gfnlm.infra.seeding import global_seed, torch_generator

BASELINES = ("greedy", "beam", "diverse_beam", "nucleus", "sampling", "tempered")


class ActionSpaceLogits(LogitsProcessor):
    """Mask next-token scores exactly as the policy's sampler does."""

    def __init__(self, space: ActionSpace, prompt_length: int):
        self.space = space
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length:]
        stream_len = torch.full((input_ids.shape[0],), generated.shape[1], device=input_ids.device)
        match = self.space.match_states(generated)[:, -1]
        return self.space.masked_logits(scores, stream_len, match)


def cut_at_terminator(space: ActionSpace, generated: Sequence[int]) -> list[int]:
    """The completion Z before the first full terminator (the forced one at max_len at the latest)."""
    states = space.match_states(torch.tensor([list(generated)], device=space.automaton.device))[0].tolist()
    m = space.terminator_length
    for i, state in enumerate(states):
        if state == m:
            return list(generated[: i - m])
    return list(generated)


@torch.no_grad()
def hf_generate(model, space: ActionSpace, prompt: Sequence[int], n: int, method: str, seed: int,
                top_p: float = 0.95) -> list[list[int]]:
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], device=device)
    pad = int(space.terminator_tensor[0])
    common = dict(max_new_tokens=space.max_len + space.terminator_length, pad_token_id=pad, eos_token_id=None,
                  top_k=None, top_p=None, temperature=None)
    if method == "greedy":
        config = GenerationConfig(do_sample=False, num_beams=1, **common)
    elif method == "beam":
        # Length penalty 0: beams are ranked by the sum of log-probabilities, the sequence mode.
        config = GenerationConfig(do_sample=False, num_beams=n, num_return_sequences=n, length_penalty=0.0,
                                  early_stopping=True, **common)
    elif method == "nucleus":
        config = GenerationConfig(do_sample=True, num_return_sequences=n, **{**common, "top_p": top_p})
    else:
        raise ValueError(f"unknown generate method {method!r}")
    if space.terminator_length == 1:  # stop rows as soon as they write the terminator
        config.eos_token_id = pad
    with global_seed(seed):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                             logits_processor=LogitsProcessorList([ActionSpaceLogits(space, ids.shape[1])]))
    rows = [cut_at_terminator(space, row[ids.shape[1]:].tolist()) for row in out]
    return rows * n if method == "greedy" else rows


@torch.no_grad()
def diverse_beam_search(model, space: ActionSpace, prompt: Sequence[int], n: int, groups: int | None = None,
                        diversity_penalty: float = 1.0) -> list[list[int]]:
    """Diverse beam search with a Hamming diversity term: ``groups`` groups of n/groups beams; at each
    step a group's candidates lose ``diversity_penalty`` per earlier group that chose the same token at
    this step. Beams are ranked by their (penalized) summed log-probabilities; returns all n beams.
    Unfinished beams all have the same length, so they share one KV cache reordered after each step."""
    groups = groups or n
    if n % groups:
        raise ValueError("n must be a multiple of the number of groups")
    width = n // groups
    device = next(model.parameters()).device
    m = space.terminator_length
    out = model(input_ids=torch.tensor([list(prompt)], device=device), use_cache=True)
    cache, logits = out.cache, out.logits[:, -1]
    # A beam: (tokens, score, automaton state, finished, row of its state in the cache / logits)
    beams = [[([], 0.0, 0, False, 0)] for _ in range(groups)]
    step = 0
    while True:
        stream_len = torch.full((logits.shape[0],), step, device=device)
        match = torch.zeros(logits.shape[0], dtype=torch.long, device=device)
        for group in beams:
            for tokens, _, state, finished, row in group:
                if not finished:
                    match[row] = state
        log_probs = space.log_probs(logits, stream_len, match).float().cpu()
        chosen_this_step = torch.zeros(log_probs.shape[-1])
        for g, group in enumerate(beams):
            candidates = [b for b in group if b[3]]
            for tokens, score, state, finished, row in group:
                if finished:
                    continue
                scores = log_probs[row] - diversity_penalty * chosen_this_step
                top = torch.topk(scores, min(width, int(torch.isfinite(scores).sum())))
                for value, tok in zip(top.values.tolist(), top.indices.tolist()):
                    nxt = int(space.automaton[state, tok])
                    candidates.append((tokens + [tok], score + value, nxt, nxt == m, row))
            candidates.sort(key=lambda b: -b[1])
            beams[g] = candidates[:width]
            for b in beams[g]:
                if len(b[0]) == step + 1:  # written at this step (older finished beams are shorter)
                    chosen_this_step[b[0][-1]] += 1
        step += 1
        active = [(g, i) for g, group in enumerate(beams) for i, b in enumerate(group) if not b[3]]
        if not active:
            break
        parents = torch.tensor([beams[g][i][4] for g, i in active], device=device)
        cache.reorder_cache(parents)
        new_tokens = torch.tensor([[beams[g][i][0][-1]] for g, i in active], device=device)
        for r, (g, i) in enumerate(active):
            beams[g][i] = beams[g][i][:4] + (r,)
        out = model(input_ids=new_tokens, cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
    return [b[0][: len(b[0]) - m] for group in beams for b in group]


def decode_baseline(method: str, model, space: ActionSpace, prompt: Sequence[int], n: int, seed: int,
                    temperature: float = 1.0, top_p: float = 0.95, batch_size: int = 64) -> list[list[int]]:
    """n completions of ``prompt`` by a named decoding method of the base model."""
    if method in ("greedy", "beam", "nucleus"):
        return hf_generate(model, space, prompt, n, method, seed, top_p=top_p)
    if method == "diverse_beam":
        return diverse_beam_search(model, space, prompt, n)
    if method in ("sampling", "tempered"):
        generator = torch_generator(next(model.parameters()).device, seed)
        return sample_completions(model, space, prompt, n, batch_size,
                                  temperature=temperature if method == "tempered" else 1.0,
                                  generator=generator, progress=False)
    raise ValueError(f"unknown decoding method {method!r}; choose from {', '.join(BASELINES)}")
