"""Replay buffer: top-k per prompt, duplicate handling, sampling, JSON-lines round trip."""

import math

import pytest
import torch

from gfnlm.core.buffer import BufferItem, ReplayBuffer
from gfnlm.infra.errors import GfnlmError


def item(tokens, reward, mask=None):
    rewards = tuple([math.nan] * len(tokens) + [reward])
    return BufferItem(tuple(tokens), tuple(mask or [True] * len(tokens)), rewards, text=str(tokens))


def test_keeps_the_top_k_by_untempered_reward_per_prompt():
    buf = ReplayBuffer(capacity=3, tolerance=0.0)
    for r in [1.0, 5.0, -2.0, 3.0, 4.0]:
        buf.add("a", item([int(r * 10) + 100, 1, 2], r))
    buf.add("b", item([7], 0.0))
    assert sorted(e.score for e in buf.items["a"]) == [3.0, 4.0, 5.0]
    assert buf.count("b") == 1 and len(buf) == 4


def test_exact_and_near_duplicates():
    buf = ReplayBuffer(capacity=10, tolerance=0.25)
    assert buf.add("a", item([1, 2, 3, 4, 5, 6], 1.0))
    assert not buf.add("a", item([1, 2, 3, 4, 5, 6], 9.0))  # exact duplicate: skipped
    assert not buf.add("a", item([1, 2, 3, 4, 5, 7], 0.5))  # near duplicate, worse: skipped
    assert buf.add("a", item([1, 2, 3, 4, 5, 8], 2.0))  # near duplicate, better: replaces
    assert [e.tokens for e in buf.items["a"]] == [(1, 2, 3, 4, 5, 8)]
    assert buf.add("a", item([9, 9, 9, 9, 9, 9], 0.0))  # far away: kept
    assert buf.count("a") == 2


def test_non_finite_rewards_are_never_stored():
    buf = ReplayBuffer()
    assert not buf.add("a", item([1], math.nan))
    assert not buf.add("a", item([1], math.inf))
    assert len(buf) == 0


def test_sampling_returns_the_requested_size_and_prioritizes_by_reward():
    buf = ReplayBuffer(capacity=10, tolerance=0.0, sampling="prioritized", priority_temperature=1.0)
    buf.add("a", item([1], 0.0))
    buf.add("a", item([2], math.log(9.0)))
    picks = buf.sample("a", 4000, torch.Generator().manual_seed(0))
    assert len(picks) == 4000
    share = sum(p.tokens == (2,) for p in picks) / len(picks)
    assert share == pytest.approx(0.9, abs=0.02)
    uniform = ReplayBuffer(capacity=10, tolerance=0.0)
    uniform.items = buf.items
    share = sum(p.tokens == (2,) for p in uniform.sample("a", 4000, torch.Generator().manual_seed(0))) / 4000
    assert share == pytest.approx(0.5, abs=0.03)
    with pytest.raises(KeyError):
        buf.sample("missing", 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_with_the_trainers_generator_on_a_gpu():
    """On a GPU the trainer's generator lives on cuda while the buffer's weights are built on the CPU;
    torch.multinomial refuses the mix, which stopped every GPU run at its first replay batch."""
    buf = ReplayBuffer(capacity=10, tolerance=0.0, sampling="prioritized")
    buf.add("a", item([1], 0.0))
    buf.add("a", item([2], math.log(9.0)))
    picks = buf.sample("a", 4000, torch.Generator(device="cuda").manual_seed(0))
    assert sum(p.tokens == (2,) for p in picks) / len(picks) == pytest.approx(0.9, abs=0.02)


def test_save_and_load_round_trip(tmp_path):
    buf = ReplayBuffer(capacity=5, tolerance=0.0)
    buf.add("x y", item([1, 2], -1.5, mask=[True, False]))
    buf.add("z", item([], 0.25))
    path = tmp_path / "buffer.jsonl"
    buf.save(path)
    other = ReplayBuffer(capacity=5, tolerance=0.0)
    other.load(path)
    assert list(other.items) == list(buf.items)
    for key in buf.items:
        for a, b in zip(buf.items[key], other.items[key]):
            assert a.tokens == b.tokens and a.policy_mask == b.policy_mask and a.text == b.text
            assert all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a.log_rewards, b.log_rewards))


def test_malformed_buffer_file_names_the_line(tmp_path):
    path = tmp_path / "buffer.jsonl"
    path.write_text('{"key": "a", "tokens": [1], "policy_mask": [1], "log_rewards": [null, 0.0]}\n{"key": 3}\n')
    with pytest.raises(GfnlmError, match="line 2"):
        ReplayBuffer().load(path)
