"""Tool calls inside rollouts, and the arithmetic data splits."""

import re

import torch

from gfnlm.core.action_space import ActionSpace
from gfnlm.core.policy_scores import score_policy
from gfnlm.core.sampler import sample_trajectories
from gfnlm.core.tools import ToolHook
from gfnlm.core.trajectories import Trajectories
from gfnlm.tasks.arithmetic.calculator import Calculator, calculate
from gfnlm.tasks.arithmetic.data import generate
from tests.conftest import char_tokenizer, tiny_llama

CHARS = list(" 0123456789+-=,?QA:")


def test_calculator_tool_answers_after_equals_only():
    tool = Calculator()
    assert tool.respond("Question: 3 + 5 - 6 = ? Answer: 3 + 5 =") == " 8"
    assert tool.respond("... Answer: 3 + 5 = 8 , 8 - 6 =") == " 2"
    assert tool.respond("Answer: 3 + x =") == " ?"
    assert tool.respond("Answer: 3 + 5") is None


def test_tool_output_is_spliced_as_non_policy_tokens_and_replays_exactly():
    tok = char_tokenizer(CHARS)
    digits_ops = [tok.convert_tokens_to_ids(c) for c in " 0123456789+-="]
    model = tiny_llama(len(tok), seed=1, init=0.5)
    space = ActionSpace(len(tok), tok.encode(",", add_special_tokens=False), min_len=1, max_len=12,
                        allowed_tokens=digits_ops)
    prompt = tuple(tok.encode("Q: 3+5-6=? A:", add_special_tokens=False))
    hook = ToolHook([Calculator()], tok)
    traj = sample_trajectories(model, space, [prompt], ["q"], torch.zeros(64, dtype=torch.long),
                               generator=torch.Generator().manual_seed(0), insert_hook=hook)
    calls = 0
    for b in range(traj.batch_size):
        row, mask = traj.row(b), traj.row_policy_mask(b)
        for k, t in enumerate(row):
            if mask[k] and tok.decode([t]) == "=":
                # everything written right after a policy "=" is the calculator's answer, not the policy's
                expected = " " + (calculate(re.split("[,:=\n]", tok.decode(row[:k]))[-1]) or "?")
                inserted = tok.decode(row[k + 1: k + 1 + len(expected)])
                assert inserted == expected[: len(inserted)]
                assert not any(mask[k + 1: k + 1 + len(inserted)])
                calls += 1
        assert all(mask[k] for k, t in enumerate(row) if tok.decode([t]) not in " 0123456789?-")
    assert calls > 5
    # A replayed trajectory carries its tool tokens and mask: scoring it again gives the same numbers.
    replay = Trajectories.from_rows([prompt], ["q"], [0] * traj.batch_size,
                                    [traj.row(b) for b in range(traj.batch_size)],
                                    [traj.row_policy_mask(b) for b in range(traj.batch_size)])
    first, again = score_policy(model, space, traj), score_policy(model, space, replay)
    torch.testing.assert_close(first.log_pf, again.log_pf)
    assert torch.equal(first.terminable, again.terminable)
    assert (first.log_pf[~traj.policy_mask] == 0).all()


def test_arithmetic_splits_are_disjoint_and_shaped_as_asked():
    data = generate(seed=3, train_size=50, gold_size=10, test_size=200,
                    test_operands={"simple": 3, "hard": 4, "ood-5": 5, "ood-6": 6}, validation_size=100)
    queries = [p.query for p in data.train] + [p.query for split in data.tests.values() for p in split]
    assert len(queries) == len(set(queries)) == 50 + 4 * 200 + 100
    assert {len(p.operands) for p in data.train} == {3, 4}
    assert {k: {len(p.operands) for p in v} for k, v in data.tests.items()} == {
        "simple": {3}, "hard": {4}, "ood-5": {5}, "ood-6": {6}, "validation": {3, 4}}
    without = generate(seed=3, train_size=50, gold_size=10, test_size=200,
                       test_operands={"simple": 3, "hard": 4, "ood-5": 5, "ood-6": 6})
    assert without.train == data.train and all(without.tests[k] == data.tests[k] for k in without.tests)
    assert data.gold == data.train[:10]
    p = data.train[0]
    chain = p.rationale.split(" , ")
    assert len(chain) == len(p.operands) - 1 and chain[-1].endswith(f"= {p.answer}")
    assert all(calculate(step.split("=")[0]) == step.split("= ")[1] for step in chain)
    assert generate(seed=3).train == data.train  # seeded


def test_stop_only_after_tool_output_agrees_between_sampler_and_scores():
    tok = char_tokenizer(CHARS)
    digits_ops = [tok.convert_tokens_to_ids(c) for c in " 3+="]  # few actions: tool calls and stops are common
    model = tiny_llama(len(tok), seed=1, init=0.5)
    space = ActionSpace(len(tok), tok.encode(",", add_special_tokens=False), max_len=24,
                        allowed_tokens=digits_ops, stop_after_insert=True)
    prompt = tuple(tok.encode("Q: 3+5-6=? A:", add_special_tokens=False))
    traj = sample_trajectories(model, space, [prompt], ["q"], torch.zeros(256, dtype=torch.long),
                               epsilon=0.5, generator=torch.Generator().manual_seed(1), insert_hook=ToolHook([Calculator()], tok))
    scores = score_policy(model, space, traj)
    stopped_after_tool = 0
    for b in range(traj.batch_size):
        n, mask = int(traj.lengths[b]), traj.row_policy_mask(b)
        assert n >= space.max_len or (n > 0 and not mask[-1])  # a stop follows tool output, or is forced
        stopped_after_tool += n < space.max_len
        assert bool(scores.terminable[b, n]) and torch.isfinite(scores.log_pf[b, :n]).all()
        for i in range(n):  # no earlier stop was possible unless right after an insertion
            assert not scores.terminable[b, i] or (i > 0 and not mask[i - 1])
    assert stopped_after_tool > 5
