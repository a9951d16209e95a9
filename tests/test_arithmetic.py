"""The arithmetic task end to end on a tiny model: calculator in rollouts, gold seeds, evaluation."""

import json

import pytest
import torch

from gfnlm.cli import main
from gfnlm.runs import prepare_model
from gfnlm.tasks.arithmetic.task import final_answer


def test_gold_rationales_are_tokenized_as_the_sampler_would_write_them(tiny_model_dir):
    spec = load_run_spec(tiny_model_dir)
    policy = prepare_model(spec)
    task = spec.task
    hook = task.insert_hook()
    for key, tokens, mask in task.seed_trajectories():
        stream = []
        for t, by_policy in zip(tokens, mask):
            if by_policy:  # replaying the policy's tokens through the tool reproduces the inserted ones
                stream.append(t)
                inserted = hook(0, list(stream))
                assert inserted == [] or list(tokens[len(stream): len(stream) + len(inserted)]) == inserted
                stream += inserted
        assert stream == list(tokens)
        assert final_answer(policy.tokenizer.decode(tokens)) == task.problem_of[key].answer
    space = task.action_space()
    allowed = torch.isfinite(space.vocab_bias)
    assert all(bool(allowed[t]) for _, tokens, mask in task.seed_trajectories() for t, m in zip(tokens, mask) if m)


def load_run_spec(model_dir):
    from gfnlm.runs import resolve

    return resolve("arithmetic", None, {"model": str(model_dir), "task": {"train_size": "6", "gold_size": "2",
                                                                         "test_size": "4"}})


def test_train_and_evaluate_on_a_tiny_model(capsys, tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    args = ["train", "arithmetic", "--model", str(tiny_model_dir), "--output_dir", str(run), "--steps", "3",
            "--trajectories_per_prompt", "4", "--progress", "false", "--lora_r", "4", "--replay_prob", "0.5",
            "--task.train_size", "6", "--task.gold_size", "2", "--task.test_size", "4", "--task.eval_questions", "3",
            "--task.eval_chains", "3", "--task.max_len", "20"]
    assert main(args) == 0
    results = json.loads((run / "eval_arithmetic.json").read_text())["results"]
    assert set(results) == {"gfn", "cot_prompting"}
    for result in results.values():
        assert set(result) == {"simple", "hard", "ood-5"}
    for r in [r for result in results.values() for r in result.values()]:
        assert r["questions"] == 3 and 0 <= r["accuracy_likelihood"] <= 1 and 0 <= r["accuracy_majority"] <= 1
        assert 0 <= r["pass@1"] <= r["pass@2"] <= r["pass@3"] <= 1 and 0 <= r["distinct_correct"] <= 3
        # max_len caps the policy's tokens; the calculator's last result may follow the cap
        assert 0 < r["mean_length"] <= 20 + 4 and r["calculator_calls"] >= 0
    buffer = [json.loads(line) for line in next((run / "checkpoints").glob("step-*/buffer.jsonl")).read_text().splitlines()]
    assert any(not all(row["policy_mask"]) for row in buffer)  # gold chains with calculator tokens were replayed


def test_the_vote_matches_full_passes_of_the_judge(tiny_model_dir):
    spec = load_run_spec(tiny_model_dir)
    policy = prepare_model(spec)
    task, tok = spec.task, policy.tokenizer
    problems = task.data.tests["simple"][:2]
    prompts = [task.prompt(p, f"q{i}") for i, p in enumerate(problems)]
    # a chain drawn twice counts twice in the total (it is scored once)
    texts = [[" 1 + 2 = 3", " 4 - 1 = 3", " 2 + 3 = 5", " 7 7", " 2 + 3 = 5", " 2 + 3 = 5"], [" 9 - 9 = 0", " 8 +"]]
    chains = [[tok.encode(t, add_special_tokens=False) for t in q] for q in texts]
    judge = list(task.few_shot_prefix(task.config.reward_shots))
    for (finals, majority, by_likelihood), problem, prompt, q in zip(
            task.vote(policy, prompts, problems, chains), problems, prompts, chains):
        assert finals == [final_answer(tok.decode(z)) for z in q]
        counts = {y: finals.count(y) for y in finals if y is not None}
        assert majority == max(counts, key=counts.get)
        totals = {}
        with torch.no_grad(), policy.base() as model:
            for y in counts:
                answer = task.answer_ids(problem, y)
                total = 0.0
                for z in q:
                    seq = judge + list(prompt.ids) + list(z) + answer
                    lp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
                    start = len(seq) - len(answer)
                    total += float(torch.exp(sum(lp[start + j - 1, t] for j, t in enumerate(answer))))
                totals[y] = total
        assert by_likelihood == max(totals, key=totals.get)


def test_the_verifier_target_is_the_lm_likelihood_of_the_chain_plus_the_checker(tiny_model_dir):
    """reward: verifier gives every prefix log p_LM(z_1..z_i stop | shots X), plus the floor when the prefix's
    last number is not the answer; checked against one plain forward pass per prefix."""
    from gfnlm.core.trajectories import Trajectories
    from gfnlm.runs import resolve

    spec = resolve("arithmetic", None, {"model": str(tiny_model_dir), "task": {
        "train_size": "6", "gold_size": "2", "test_size": "4", "reward": "verifier", "verifier_floor": "-7"}})
    policy = prepare_model(spec)
    task = spec.task
    prompt = task.train_set[0]
    right, _ = task.rationale_tokens(task.problem_of[prompt.key])
    wrong = right[:-1] + tuple(task.tokenizer.encode(str((int(task.tokenizer.decode(right[-1:])) + 1) % 10),
                                                     add_special_tokens=False))
    traj = Trajectories.from_rows([prompt.ids], [prompt.key], [0, 0], [right, wrong])
    got = task.target(policy).log_rewards(traj)
    context = list(task.few_shot_prefix(task.config.reward_shots)) + list(prompt.ids)
    answer = task.problem_of[prompt.key].answer
    for b, row in enumerate([right, wrong]):
        for i in range(task.config.min_len, len(row) + 1):
            scored = list(row[:i]) + task.stop
            with policy.base() as model, torch.no_grad():
                logits = model(input_ids=torch.tensor([context + scored])).logits[0].float()
            lm = sum(float(torch.log_softmax(logits[len(context) + j - 1], -1)[t]) for j, t in enumerate(scored))
            check = 0.0 if final_answer(task.tokenizer.decode(list(row[:i]))) == answer else -7.0
            assert got[b, i].item() == pytest.approx(lm + check, abs=1e-4)
    assert got[0, len(right)] - got[1, len(wrong)] > 0  # the right chain beats the wrong one by the floor
