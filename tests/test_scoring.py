"""Batched forward passes, policy scores, targets and the sampler against naive full-sequence computations."""

from collections import Counter

import pytest
import torch

import gfnlm.core.sampler as sampler_module
from gfnlm.core.action_space import ActionSpace
from gfnlm.core.lm_forward import continuation_log_probs, encode_prompts, state_logits
from gfnlm.core.policy_scores import score_policy
from gfnlm.core.sampler import sample_trajectories
from gfnlm.core.trajectories import Trajectories
from gfnlm.inference.exact import normalize, policy_distribution, total_variation
from gfnlm.model.policy import LoraSettings, Policy
from gfnlm.targets import LMLikelihood, PromptAnswerLikelihood, RuleTarget
from tests.conftest import tiny_llama

V = 9


@torch.no_grad()
def full_log_probs(model, ids):
    return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


@pytest.mark.parametrize("shared_prefix,pack_tokens", [((), 256), ((4, 4, 2), 256), ((), 5)])
def test_packed_state_logits_match_one_forward_per_prefix(shared_prefix, pack_tokens):
    """Rows of different lengths, laid end to end (pack_tokens 5: several packs, rows alone in theirs)."""
    model = tiny_llama(V)
    prompts = [(1, 2, 3, 4, 5), (6, 7)]
    index = torch.tensor([0, 1, 1, 0, 0])
    tokens = torch.randint(0, V, (5, 4), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([4, 2, 0, 3, 1])
    cont = [8, 3, 8]
    with torch.no_grad():
        states, copies = state_logits(model, encode_prompts(model, prompts, shared_prefix), index, tokens, cont,
                                      lengths, pack_tokens)
        for b in range(5):
            prompt = list(shared_prefix) + list(prompts[int(index[b])])
            for i in range(5):
                if i > lengths[b]:  # past the row's end: nothing computed
                    assert not states[b, i].any() and not copies[b, i].any()
                    continue
                full = model(input_ids=torch.tensor([prompt + tokens[b, :i].tolist() + cont])).logits[0]
                p = len(prompt)
                torch.testing.assert_close(states[b, i], full[p + i - 1], atol=1e-5, rtol=1e-5)
                for j in range(len(cont) - 1):
                    torch.testing.assert_close(copies[b, i, j], full[p + i + j], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("terminator,min_len", [([8], 0), ([8], 2), ([7, 8], 1), ([8, 8], 0)])
def test_policy_scores_equal_exact_sequence_probabilities(terminator, min_len):
    model = tiny_llama(V, seed=1)
    space = ActionSpace(V, terminator, min_len=min_len, max_len=3, banned_tokens=[0])
    prompt = (0, 5)
    exact = policy_distribution(model, space, prompt)
    traj = sample_trajectories(model, space, [prompt], ["p"], torch.zeros(24, dtype=torch.long),
                               temperature=2.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = score_policy(model, space, traj)
    for b in range(traj.batch_size):
        row = traj.row(b)
        for i in range(len(row) + 1):
            prefix = tuple(row[:i])
            if scores.terminable[b, i]:
                got = float(scores.log_pf[b, :i].sum() + scores.log_stop[b, i])
                assert got == pytest.approx(exact[prefix], abs=1e-4)
            else:
                assert prefix not in exact or i < len(row) and i < min_len
        assert scores.terminable[b, len(row)]


def test_lm_likelihood_scores_every_prefix_like_separate_passes():
    base = tiny_llama(V, seed=2)
    policy = Policy(base, None, LoraSettings(r=4, alpha=8))
    for p in policy.trainable_parameters():  # make the adapter matter, so disabling it is tested
        torch.nn.init.normal_(p, std=0.5)
    prompts = [(1, 2, 3), (4,)]
    traj = Trajectories.from_rows(prompts, ["a", "b"], [0, 1, 0], [[5, 6, 7], [2], []])
    terminator = [8, 3]
    rewards = LMLikelihood(policy, terminator).log_rewards(traj)
    with torch.no_grad(), policy.base() as model:
        for b in range(traj.batch_size):
            prompt, row = list(traj.row_prompt(b)), traj.row(b)
            for i in range(len(row) + 1):
                seq = prompt + row[:i] + terminator
                lp = full_log_probs(model, seq)
                want = sum(float(lp[k - 1, seq[k]]) for k in range(len(prompt), len(seq)))
                assert float(rewards[b, i]) == pytest.approx(want, abs=1e-4)
    adapted = full_log_probs(policy.model, [1, 2, 3, 5, 8])
    with policy.base() as model:
        plain = full_log_probs(model, [1, 2, 3, 5, 8])
    assert not torch.allclose(adapted, plain)  # the adapter is on outside policy.base()


@pytest.mark.parametrize("context_prefix", [(), (2, 7, 7, 1)])
def test_prompt_answer_likelihood_scores_every_prefix_with_its_own_answer(context_prefix):
    """log p(X z_1..z_i Y_X | C) - log p(X | C) for every i (C: text only the reward reads), one packed pass
    per answer, against one pass per prefix."""
    base = tiny_llama(V, seed=5)
    policy = Policy(base, None, LoraSettings(r=4, alpha=8))
    prompts = [(1, 2, 3), (4,), (6, 6)]
    answers = {"a": [8, 3, 2], "b": [7], "c": [5, 5]}
    traj = Trajectories.from_rows(prompts, ["a", "b", "c"], [0, 1, 2, 0, 1], [[5, 6, 7], [2], [], [4, 4], [1, 2, 3, 4]])
    rewards = PromptAnswerLikelihood(policy, answers, chunk_size=2, context_prefix=context_prefix).log_rewards(traj)
    with torch.no_grad(), policy.base() as model:
        for b in range(traj.batch_size):
            prompt = list(context_prefix) + list(traj.row_prompt(b))
            row, answer = traj.row(b), answers[traj.row_key(b)]
            for i in range(len(row) + 1):
                seq = prompt + row[:i] + answer
                lp = full_log_probs(model, seq)
                want = sum(float(lp[k - 1, seq[k]]) for k in range(len(prompt), len(seq)))
                assert float(rewards[b, i]) == pytest.approx(want, abs=1e-4)


def test_continuation_log_probs_match_single_passes():
    model = tiny_llama(V, seed=6)
    # shared contexts (one cache, several continuations), chunks that split them, an empty continuation
    contexts = [(1, 2, 3), (4,), (5, 6, 7, 8, 1), (4,), (1, 2, 3), (2, 2)]
    answers = [(2,), (3, 3, 1), (7, 6), (5,), (1, 1, 4, 2), ()]
    got = continuation_log_probs(model, contexts, answers, batch_size=2)
    shared = continuation_log_probs(model, contexts, answers, batch_size=2, shared_prefix=(3, 1))
    with torch.no_grad():
        for k, (c, y) in enumerate(zip(contexts, answers)):
            lp = full_log_probs(model, [3, 1] + list(c) + list(y))
            want = sum(float(lp[2 + len(c) + j - 1, y[j]]) for j in range(len(y)))
            assert float(shared[k]) == pytest.approx(want, abs=1e-4)
            lp = full_log_probs(model, list(c) + list(y))
            want = sum(float(lp[len(c) + j - 1, y[j]]) for j in range(len(y)))
            assert float(got[k]) == pytest.approx(want, abs=1e-4)
    # Continuations that all begin with the same tokens (run once per context): the same numbers.
    lead = (8, 4, 2)
    led = continuation_log_probs(model, contexts, [lead + y for y in answers], batch_size=4)
    with torch.no_grad():
        for k, (c, y) in enumerate(zip(contexts, answers)):
            seq = list(c) + list(lead + y)
            lp = full_log_probs(model, seq)
            want = sum(float(lp[j - 1, seq[j]]) for j in range(len(c), len(seq)))
            assert float(led[k]) == pytest.approx(want, abs=1e-4)


def test_products_and_powers_of_targets():
    traj = Trajectories.from_rows([(1,)], ["p"], [0, 0], [[2, 3], [4]])
    length = RuleTarget(lambda p, z: float(len(z)), on="tokens")
    first = RuleTarget(lambda p, z: float(z[0]) if z else 0.0, on="tokens")
    combined = (length * first) ** 0.5
    want = 0.5 * (length.log_rewards(traj) + first.log_rewards(traj))
    torch.testing.assert_close(combined.log_rewards(traj), want)
    assert length.log_rewards(traj)[0].tolist() == [0.0, 1.0, 2.0]


def test_cached_sampling_sees_the_same_distributions_as_full_forwards(monkeypatch):
    model = tiny_llama(V, seed=3)
    space = ActionSpace(V, [8], min_len=1, max_len=6, banned_tokens=[0])
    seen = []
    original = sampler_module.draw

    def recording_draw(probs, generator):
        picks = original(probs, generator)
        seen.append((probs.clone(), picks.clone()))
        return picks

    def hook(row, stream):  # a "tool": after token 4, write 6 6 into the stream
        return [6, 6] if stream[-1] == 4 else []

    monkeypatch.setattr(sampler_module, "draw", recording_draw)
    prompts = [(1, 2, 3, 4), (5,)]
    traj = sample_trajectories(model, space, prompts, ["a", "b"], torch.tensor([0, 1, 0, 1, 1, 0]),
                               temperature=1.0, epsilon=0.1, generator=torch.Generator().manual_seed(1),
                               insert_hook=hook)
    inserted = 0
    for b in range(traj.batch_size):
        row, mask = traj.row(b), traj.row_policy_mask(b)
        for k, tok in enumerate(row):
            if not mask[k]:
                assert tok == 6 and (row[k - 1] == 4 or row[k - 2] == 4)
                inserted += 1
        stream = row + [8]
        prompt = list(traj.row_prompt(b))
        policy_steps = [k for k in range(len(stream)) if k == len(row) or mask[k]]
        for step, k in enumerate(policy_steps):
            logits = model(input_ids=torch.tensor([prompt + stream[:k]])).logits[0, -1]
            masked = space.masked_logits(logits, torch.tensor(k), torch.tensor(0))
            want = sampler_module.behaviour_probs(masked[None], 1.0, 0.1)[0]
            probs, picks = seen[step]
            torch.testing.assert_close(probs[b], want, atol=1e-5, rtol=1e-4)
            assert int(picks[b]) == stream[k]
    assert inserted > 0


def test_sampler_frequencies_match_the_exact_distribution():
    model = tiny_llama(5, seed=4, init=0.5)
    space = ActionSpace(5, [4], min_len=0, max_len=2, banned_tokens=[0])
    exact = normalize(policy_distribution(model, space, (0,)))
    traj = sample_trajectories(model, space, [(0,)], ["p"], torch.zeros(6000, dtype=torch.long),
                               generator=torch.Generator().manual_seed(0))
    counts = Counter(tuple(traj.row(b)) for b in range(traj.batch_size))
    empirical = {k: v / traj.batch_size for k, v in counts.items()}
    assert set(empirical) <= set(exact)
    assert total_variation(empirical, exact) < 0.04
