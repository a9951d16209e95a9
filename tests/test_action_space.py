"""Termination rules of the action space: the match automaton, length limits, terminable states."""

import itertools

import pytest
import torch

from gfnlm.core.action_space import ActionSpace, match_automaton
from gfnlm.infra.errors import GfnlmError


def longest_suffix_prefix(stream, pattern):
    for k in range(min(len(stream), len(pattern)), -1, -1):
        if list(stream[len(stream) - k:]) == list(pattern[:k]):
            return k
    return 0


@pytest.mark.parametrize("pattern", [[1], [1, 2], [1, 1], [1, 2, 1], [2, 2, 1, 2]])
def test_automaton_tracks_the_longest_matched_prefix(pattern):
    table = match_automaton(pattern, 4)
    for length in range(6):
        for stream in itertools.product(range(4), repeat=length):
            state = 0
            for i, tok in enumerate(stream):
                state = int(table[state, tok])
                if state == len(pattern):
                    assert list(stream[: i + 1][-len(pattern):]) == pattern
                    break
                assert state == longest_suffix_prefix(stream[: i + 1], pattern)


def test_min_len_bans_the_completing_token_and_max_len_forces_the_terminator():
    space = ActionSpace(6, [5], min_len=2, max_len=3, banned_tokens=[0])
    logits = torch.zeros(4, 6)
    lengths = torch.tensor([0, 1, 2, 3])
    x = space.masked_logits(logits, lengths, torch.zeros(4, dtype=torch.long))
    assert torch.isinf(x[:, 0]).all()  # vocabulary mask
    assert torch.isinf(x[0, 5]) and torch.isinf(x[1, 5]) and torch.isfinite(x[2, 5])
    assert torch.isfinite(x[3]).sum() == 1 and torch.isfinite(x[3, 5])  # forced stop at max_len


def test_multi_token_terminator_rules():
    space = ActionSpace(6, [4, 5], min_len=1, max_len=4)
    # after "4" the stream matches one terminator token; completing it at length 1 would give |Z| = 0 < min_len
    x = space.masked_logits(torch.zeros(6), torch.tensor(1), torch.tensor(1))
    assert torch.isinf(x[5])
    # at the cap with a partial terminator, only its next token may follow
    x = space.masked_logits(torch.zeros(6), torch.tensor(4), torch.tensor(1))
    assert torch.isfinite(x).sum() == 1 and torch.isfinite(x[5])


def test_overlapping_terminator_makes_some_states_not_terminable():
    space = ActionSpace(6, [3, 3], min_len=0, max_len=5)
    # Z ending in "3" cannot stop: writing "3 3" after it completes the terminator one token early.
    match = space.match_states(torch.tensor([[1, 3]]))
    terminable = space.structurally_terminable(match, torch.arange(3)[None])
    assert terminable.tolist() == [[True, True, False]]


def test_bad_action_spaces_are_refused():
    with pytest.raises(GfnlmError):
        ActionSpace(6, [], max_len=3)
    with pytest.raises(GfnlmError):
        ActionSpace(6, [9], max_len=3)
    with pytest.raises(GfnlmError):
        ActionSpace(6, [1, 2], min_len=4, max_len=4)
    with pytest.raises(GfnlmError):
        ActionSpace(6, [1], max_len=3, allowed_tokens=[1])
