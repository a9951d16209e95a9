"""Decoding baselines respect the action space; diverse beam search checked against enumeration."""


import pytest
import torch

from gfnlm.baselines.decoding import cut_at_terminator, decode_baseline, diverse_beam_search
from gfnlm.core.action_space import ActionSpace
from gfnlm.inference.exact import policy_distribution
from tests.conftest import tiny_llama

PROMPT = (5,)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(6, seed=2, init=0.5)


@pytest.fixture(scope="module")
def space():
    return ActionSpace(6, [4], min_len=1, max_len=3, banned_tokens=[5])


@pytest.mark.parametrize("method", ["greedy", "beam", "diverse_beam", "nucleus", "sampling", "tempered"])
def test_every_method_stays_in_the_action_space(model, space, method):
    support = set(policy_distribution(model, space, PROMPT))
    rows = decode_baseline(method, model, space, PROMPT, 6, seed=0, temperature=0.7)
    assert len(rows) == 6
    assert all(tuple(r) in support for r in rows)  # no banned token, no terminator inside, 1..3 tokens


def test_greedy_follows_the_argmax(model, space):
    z = decode_baseline("greedy", model, space, PROMPT, 1, seed=0)[0]
    stream, match = [], 0
    while True:
        logits = model(input_ids=torch.tensor([list(PROMPT) + stream])).logits[0, -1]
        lp = space.log_probs(logits, torch.tensor(len(stream)), torch.tensor(match))
        tok = int(lp.argmax())
        if tok == 4:
            break
        stream.append(tok)
        match = int(space.automaton[match, tok])
    assert z == stream


def test_beam_search_without_pruning_enumerates_every_sequence_in_order(model, space):
    """With one group wider than the whole tree and no penalty, the beams are every sequence, ranked
    by exact log-probability: the brute-force answer."""
    exact = policy_distribution(model, space, PROMPT)
    beams = diverse_beam_search(model, space, PROMPT, n=256, groups=1, diversity_penalty=0.0)
    assert sorted(map(tuple, beams)) == sorted(exact)
    probs = [exact[tuple(b)] for b in beams]
    assert probs == sorted(probs, reverse=True)


def test_the_diversity_penalty_spreads_the_groups(model, space):
    plain = diverse_beam_search(model, space, PROMPT, n=4, groups=4, diversity_penalty=0.0)
    assert len({tuple(b) for b in plain}) == 1  # every group is the same greedy beam
    spread = diverse_beam_search(model, space, PROMPT, n=4, groups=4, diversity_penalty=100.0)
    assert len({b[0] for b in spread}) == 4  # a huge penalty forces four different first tokens


def test_cut_at_terminator_handles_multi_token_terminators():
    space = ActionSpace(6, [3, 4], min_len=0, max_len=5)
    assert cut_at_terminator(space, [1, 3, 2, 3, 4, 0]) == [1, 3, 2]
    assert cut_at_terminator(space, [3, 4]) == []
