"""Log-probabilities of given trajectories under the policy, recomputed in one forward pass (with
gradient when enabled): the token terms log q(z_{i+1} | s_i) and the stop terms log q(T | s_i) of
every state, under exactly the action rules the sampler used."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gfnlm.core.action_space import ActionSpace
from gfnlm.core.lm_forward import encode_prompts, visited_state_logits
from gfnlm.core.trajectories import Trajectories


@dataclass
class PolicyScores:
    log_pf: torch.Tensor  # (B, L) log q(z_{i+1} | s_i); 0 for inserted tokens and padding
    log_stop: torch.Tensor  # (B, L+1) log q(stop | s_i); 0 where the state is not terminable
    terminable: torch.Tensor  # (B, L+1) the trajectory visits s_i and could have stopped there


def score_policy(model, action_space: ActionSpace, traj: Trajectories) -> PolicyScores:
    tokens = traj.tokens
    batch, length = tokens.shape
    device = tokens.device
    term = action_space.terminator
    prompt_cache = encode_prompts(model, traj.prompts)
    # Log-probabilities only at the states the rows visit (one row per state), then laid out (B, L+1).
    states = visited_state_logits(model, prompt_cache, traj.prompt_index, tokens, term, traj.lengths)
    row, index = states.row, states.index

    match = action_space.match_states(tokens)  # (B, L+1)
    state_index = torch.arange(length + 1, device=device)[None].expand(batch, -1)
    visited = traj.state_mask()
    after_insert = torch.zeros_like(visited)  # state s_i follows a token the environment inserted
    after_insert[:, 1:] = visited[:, 1:] & ~traj.policy_mask
    log_probs = action_space.log_probs(states.logits, index, match[row, index], after_insert[row, index])

    chosen = torch.nn.functional.pad(traj.policy_mask, (0, 1))[row, index]  # the policy wrote z_{i+1}
    token_lp = log_probs.gather(-1, states.next_token[:, None]).squeeze(-1)
    token_lp = torch.where(chosen, token_lp, torch.zeros_like(token_lp))
    log_pf = states.dense(token_lp, batch, length)[:, :length]

    stop_lp = log_probs[:, term[0]]
    copy_match = match[row, index]
    for j in range(1, len(term)):
        copy_match = action_space.automaton[copy_match, term[j - 1]]
        copy_log_probs = action_space.log_probs(states.copies[:, j - 1], index + j, copy_match)
        stop_lp = stop_lp + copy_log_probs[:, term[j]]
    log_stop = states.dense(stop_lp, batch, length)

    # A state whose next token was inserted (tool output) cannot stop: the environment writes on.
    next_inserted = torch.zeros_like(visited)
    next_inserted[:, :-1] = visited[:, 1:] & ~traj.policy_mask
    terminable = (
        visited
        & ~next_inserted
        & action_space.structurally_terminable(match, state_index, after_insert)
        & torch.isfinite(log_stop)
    )
    log_stop = torch.where(terminable, log_stop, torch.zeros_like(log_stop))
    return PolicyScores(log_pf, log_stop, terminable)
