"""Classification with a latent rationale: the data loader, the E-step reward against naive passes, the
posterior-predictive vote, and EM end to end on a tiny model (likelihood rises over rounds, exact resume)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from gfnlm.cli import main
from gfnlm.core.sampler import sample_trajectories
from gfnlm.core.trainer import Trainer
from gfnlm.core.trajectories import Trajectories
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import LoraSettings, Policy
from gfnlm.tasks.classification import em
from gfnlm.tasks.classification.data import load_labelled_jsonl, parse_labels
from gfnlm.tasks.classification.em import held_out_examples
from gfnlm.tasks.classification.labels import vote
from gfnlm.tasks.classification.target import RationaleLabelReward
from gfnlm.tasks.classification.task import ClassificationConfig, ClassificationTask, label_word_tokens
from tests.conftest import char_tokenizer, tiny_llama

LABELS = ["objective", "subjective"]
ROWS = [("the film is set in a town.", "objective"), ("a great and lovely film.", "subjective"),
        ("the plot follows a man.", "objective"), ("i hated it.", "subjective"),
        ("the story takes place at sea.", "objective"), ("what a boring mess.", "subjective")]


def write_rows(path, rows):
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


# ------------------------------------------------------------------------------------------------ data
def test_loader_reads_names_and_indices(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a  b", "label": 1, "label_text": "subjective"}\n\n{"text": "c", "label": "objective"}\n')
    rows = load_labelled_jsonl(path, LABELS)
    assert [(r.text, r.label) for r in rows] == [("a b", 1), ("c", 0)]


@pytest.mark.parametrize("content,message", [
    ('{"text": "a", "label": 0}\nnot json\n', "line 2: not a JSON object"),
    ('[1, 2]\n', "line 1: expected an object"),
    ('{"label": 0}\n', "line 1: \"text\" must be a non-empty string"),
    ('{"text": "  ", "label": 0}\n', "line 1: \"text\" must be"),
    ('{"text": "a", "label": 2}\n', "line 1: label index 2 is out of range"),
    ('{"text": "a", "label": "neutral"}\n', "line 1: label 'neutral' is not one of objective, subjective"),
    ('{"text": "a", "label": true}\n', "line 1: \"label\" must be a label name"),
    ('{"text": "a"}\n', "line 1: \"label\" must be a label name"),
    ('\n\n', "holds no rows"),
])
def test_loader_names_the_line_and_the_problem(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(GfnlmError, match=message):
        load_labelled_jsonl(path, LABELS)


def test_loader_refuses_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(GfnlmError, match="does not exist"):
        load_labelled_jsonl(tmp_path / "none.jsonl", LABELS)
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "\xff", "label": 0}\n')
    with pytest.raises(GfnlmError, match="not UTF-8"):
        load_labelled_jsonl(tmp_path / "bad.jsonl", LABELS)
    for bad in ("objective", "a,a", "a,,b"):
        with pytest.raises(GfnlmError):
            parse_labels(bad)


# ------------------------------------------------------------------------------------------------ reward
@torch.no_grad()
def full_log_probs(model, ids):
    return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


def sequence_log_prob(model, context, continuation):
    lp = full_log_probs(model, list(context) + list(continuation))
    return sum(float(lp[len(context) + k - 1, t]) for k, t in enumerate(continuation))


@pytest.mark.parametrize("trained_likelihood,calibrated", [(False, False), (True, False), (False, True), (True, True)])
def test_rationale_reward_of_every_prefix_matches_naive_passes(trained_likelihood, calibrated):
    """log p_base(z_1..z_i | X) + log p_lik(Y_true | X z_1..z_i) - penalty [another label is more likely],
    for every prefix, against one full forward per (prefix, label); calibrated: every label score minus
    the likelihood model's mean normalized label log-probability after the content-free prompts."""
    vocab = 9
    policy = Policy(tiny_llama(vocab, seed=3), None, LoraSettings(r=4, alpha=8))
    policy.add_adapter("likelihood")
    if trained_likelihood:  # a likelihood that differs from the base model
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if ".likelihood." in name:
                    p.copy_(torch.randn_like(p) * 0.5)
    answers = [[8, 3, 2], [8, 3, 5, 1]]
    prompts = [(1, 2, 3), (4, 6)]
    label_of = {"a": 0, "b": 1}
    content_free = [(7,), (2, 5)] if calibrated else []
    target = RationaleLabelReward(policy, answers, label_of, penalty=7.0, chunk_size=2, content_free=content_free)
    if trained_likelihood:
        target.likelihood_adapter = "likelihood"
    traj = Trajectories.from_rows(prompts, ["a", "b"], [0, 1, 1, 0], [[5, 6, 7], [2], [], [4, 4, 1, 6]])
    rewards = target.log_rewards(traj)
    assert target.last_label_scores[0] is traj  # label_scores(traj) below reads what the reward call kept
    with policy.adapter("likelihood") if trained_likelihood else policy.base() as model:
        offsets = [0.0, 0.0]
        for c in content_free:
            raw = torch.tensor([sequence_log_prob(model, list(c), a) for a in answers])
            offsets = [o + float(v) / len(content_free) for o, v in zip(offsets, torch.log_softmax(raw, -1))]
    if calibrated:
        assert max(abs(o) for o in offsets) > 0.05  # the calibration moves the scores
    penalized = 0
    for b in range(traj.batch_size):
        prompt, row, true = list(traj.row_prompt(b)), traj.row(b), label_of[traj.row_key(b)]
        for i in range(len(row) + 1):
            with policy.base() as model:
                prefix = sequence_log_prob(model, prompt, row[:i])
            with policy.adapter("likelihood") if trained_likelihood else policy.base() as model:
                stops = [sequence_log_prob(model, prompt + row[:i], a) - o for a, o in zip(answers, offsets)]
            # the label scores kept from the reward call (chunks of 2 rows, padded) are the naive ones too
            kept = target.label_scores(traj)[b, i].tolist()
            assert kept == pytest.approx(stops, abs=1e-4)
            wrong = max(stops) > stops[true]
            penalized += wrong
            assert float(rewards[b, i]) == pytest.approx(prefix + stops[true] - 7.0 * wrong, abs=1e-4)
    assert 0 < penalized  # the penalty branch is exercised
    other = Trajectories.from_rows(prompts, ["a", "b"], [0, 1], [[5, 6, 7], [2]])  # not the batch last scored
    assert torch.allclose(target.label_scores(other), target.label_log_probs(other)[1])
    assert all(p.requires_grad for n, p in policy.model.named_parameters() if ".default." in n)
    assert not any(p.requires_grad for n, p in policy.model.named_parameters() if ".likelihood." in n)


def test_vote_matches_counting_by_hand():
    generator = torch.Generator().manual_seed(0)
    lp = torch.randn(50, 5, 3, generator=generator) * 2
    lp[0] = torch.tensor([[0.0, -9, -9], [0.0, -9, -9], [-9, 0.0, -9], [-9, 0.0, -9], [-9, -9, 0.0]])  # a tie
    lp[0, 2, 1] = 1.0  # ... broken by the mean probability
    got = vote(lp)
    for n in range(50):
        probs = torch.softmax(lp[n], -1)
        counts = [int((probs.argmax(-1) == y).sum()) for y in range(3)]
        best = max(counts)
        tied = [y for y in range(3) if counts[y] == best]
        assert int(got["majority"][n]) == max(tied, key=lambda y: float(probs[:, y].mean()))
        assert int(got["mean_prob"][n]) == int(probs.mean(0).argmax())
    assert int(got["majority"][0]) == 1


@pytest.mark.parametrize("ban", [True, False])
def test_rationales_cannot_write_a_label_name(tmp_path, ban):
    """With ban_label_words no token of "objective" / "Subjective" / ... can appear in a rationale (a
    character tokenizer makes this strict: none of their characters); without it they do appear."""
    tok = char_tokenizer()
    task = ClassificationTask(ClassificationConfig(data=str(write_rows(tmp_path / "d.jsonl", ROWS)),
                                                   ban_label_words=ban, max_len=5))
    task.setup(tok, len(tok))
    label_tokens = label_word_tokens(tok, LABELS)
    assert set(tok.encode(" Subjective")) <= label_tokens
    space = task.action_space()
    model = tiny_llama(len(tok), seed=1, init=0.02)  # nearly uniform over what the space allows
    traj = sample_trajectories(model, space, [task.train_set[0].ids], ["k"], torch.zeros(200, dtype=torch.long),
                               generator=torch.Generator().manual_seed(0))
    written = {t for b in range(traj.batch_size) for t in traj.row(b)}
    assert bool(written & label_tokens) != ban


def test_held_out_examples_are_a_seeded_share_never_all():
    assert held_out_examples(10, 0.2, 0) == held_out_examples(10, 0.2, 0) and len(held_out_examples(10, 0.2, 0)) == 2
    assert len(held_out_examples(3, 0.2, 0)) == 1 and len(held_out_examples(2, 0.9, 0)) == 1
    assert held_out_examples(10, 0.0, 0) == set() and held_out_examples(1, 0.5, 0) == set()


# ------------------------------------------------------------------------------------------------ EM
def em_args(tmp_path, tiny_model_dir, run, rounds, steps, extra=()):
    train = write_rows(tmp_path / "train.jsonl", ROWS)
    test = write_rows(tmp_path / "test.jsonl", ROWS[::-1])
    return ["train", "classify", "--model", str(tiny_model_dir), "--output_dir", str(run), "--steps", str(steps),
            "--trajectories_per_prompt", "4", "--prompts_per_batch", "2", "--progress", "false", "--lora_r", "4",
            "--lr", "1e-3", "--log_z", "batch", "--replay_prob", "0.5",
            "--data", str(train), "--test_data", str(test), "--task.prompt_template", "Review: {text} This is",
            "--task.em_rounds", str(rounds), "--task.seed_rationales", "3", "--task.m_rationales", "4",
            "--task.m_epochs", "4", "--task.m_lr", "3e-3", "--task.eval_rationales", "3",
            "--task.supervised_epochs", "2", *extra]


@pytest.mark.slow
def test_em_raises_the_likelihood_of_the_training_labels_over_rounds(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    extra = ["--task.calibrate", "true", "--task.m_keep_only_if_better", "false"]  # every fit kept: EM's own effect
    assert main(em_args(tmp_path, tiny_model_dir, run, rounds=3, steps=6, extra=extra)) == 0
    rounds = [json.loads(line) for line in (run / "em.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3] and [r["step"] for r in rounds] == [2, 4, 6]
    for r in rounds:  # each M-step raises log p(Y_true | X, Z) of its rationales
        assert r["label_log_likelihood_after"] > r["label_log_likelihood_before"]
    assert rounds[-1]["label_log_likelihood_after"] > rounds[0]["label_log_likelihood_before"] + 0.1
    results = json.loads((run / "eval_classification.json").read_text())["results"]
    assert set(results) == {"zero_shot", "few_shot", "supervised", "gfn_e_step", "gfn_em"}
    for r in results.values():
        assert 0 <= r["accuracy"] <= 1
    assert (run / "classification_accuracy.png").stat().st_size > 0


def test_zero_em_rounds_trains_the_e_step_alone(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    extra = ["--task.eval_methods", "gfn_e_step,gfn_em"]
    assert main(em_args(tmp_path, tiny_model_dir, run, rounds=0, steps=3, extra=extra)) == 0
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not (run / "em.jsonl").exists() and not list(run.glob("likelihood-round-*"))
    results = json.loads((run / "eval_classification.json").read_text())["results"]
    assert 0 <= results["gfn_e_step"]["accuracy"] <= 1
    assert results["gfn_em"] == {"skipped": "no M-step adapter in the run folder"}


@pytest.mark.parametrize("calibrate", ["false", "true"])
def test_eval_again_scores_zero_shot_as_naive_passes_do(tmp_path, tiny_model_dir, calibrate, capsys):
    """`gfnlm eval` with evaluation overrides: zero-shot (" <label>." right after X, minus the label prior when
    calibrated) against one full forward per (sentence, label); overrides that would change training are
    refused before any model loads."""
    from gfnlm.runs import load_run, load_trained_policy

    run = tmp_path / "run"
    extra = ["--task.eval_methods", "gfn_e_step", "--task.calibrate", calibrate]
    assert main(em_args(tmp_path, tiny_model_dir, run, rounds=0, steps=2, extra=extra)) == 0
    assert main(["eval", "classify", "--run", str(run), "--task.m_lr", "1e-2", "--lr", "1"]) == 2
    assert "not how it was trained: --lr, --task.m_lr" in capsys.readouterr().err
    assert main(["eval", "classify", "--run", str(run), "--m_lr", "1e-2"]) == 2  # a task option without task.
    assert "not how it was trained: --task.m_lr" in capsys.readouterr().err
    overrides = ["--task.eval_methods", "zero_shot", "--task.eval_size", "5", "--progress", "false"]
    assert main(["eval", "classify", "--run", str(run), *overrides]) == 0
    saved = json.loads((run / "eval_classification.json").read_text())
    assert saved["test_sentences"] == 5 and set(saved["results"]) == {"zero_shot"}
    assert "zero_shot" in (run / "report.md").read_text()
    spec = load_run(run, {"task": {"eval_size": "5"}})
    policy = load_trained_policy(spec, run)
    task = spec.task
    with policy.base() as model:
        offsets = torch.zeros(len(task.direct_answers))
        for c in task.content_free:
            raw = torch.tensor([sequence_log_prob(model, list(c), a) for a in task.direct_answers])
            offsets += torch.log_softmax(raw, -1) / len(task.content_free)
        scores = torch.tensor([[sequence_log_prob(model, list(x.ids), a) for a in task.direct_answers]
                               for x in task.test_set]) - offsets
    assert len(scores) == 5 and (calibrate == "true") == bool(task.content_free)
    truth = torch.tensor([row.label for row in task.test_rows])
    assert saved["results"]["zero_shot"]["accuracy"] == pytest.approx(float((scores.argmax(-1) == truth).float().mean()))


@pytest.mark.parametrize("adapter,calibrate", [(None, False), (None, True), ("likelihood", True)])
def test_rationale_scores_match_naive_passes(tmp_path, adapter, calibrate):
    """The label scores of the GFlowNet rows and of the keep check: log p(Z Y_y | X) under the base model or
    the likelihood adapter, minus that model's label prior when calibrated, against one full forward each."""
    tok = char_tokenizer()
    task = ClassificationTask(ClassificationConfig(data=str(write_rows(tmp_path / "d.jsonl", ROWS)),
                                                   prompt_template="Review: {text} This is", calibrate=calibrate))
    task.setup(tok, len(tok))
    policy = Policy(tiny_llama(len(tok), seed=3), None, LoraSettings(r=4, alpha=8))
    policy.add_adapter("likelihood")
    with torch.no_grad():  # a likelihood that differs from the base model
        for name, p in policy.model.named_parameters():
            if ".likelihood." in name:
                p.copy_(torch.randn_like(p) * 0.5)
    prompts = [tp.ids for tp in task.train_set[:3]]
    rationales = [[task.encode(" a great"), task.encode(" set")] for _ in prompts]
    got = task.rationale_scores(policy, prompts, rationales, adapter)
    with policy.adapter(adapter) if adapter else policy.base() as model:
        offsets = torch.zeros(len(task.answers))
        for c in task.content_free:
            raw = torch.tensor([sequence_log_prob(model, list(c), a) for a in task.answers])
            offsets += torch.log_softmax(raw, -1) / len(task.content_free)
        naive = torch.tensor([[[sequence_log_prob(model, list(x), z + a) for a in task.answers] for z in zs]
                              for x, zs in zip(prompts, rationales)]) - offsets
    assert calibrate == bool(task.content_free) and (not calibrate or offsets.abs().max() > 0.01)
    assert got.shape == (3, 2, 2)
    assert got.float() == pytest.approx(naive, abs=1e-4)


@pytest.mark.parametrize("rounds", [1, 0])
def test_m_step_held_out_examples_stay_out_of_the_e_step(tmp_path, rounds):
    tok = char_tokenizer()
    task = ClassificationTask(ClassificationConfig(data=str(write_rows(tmp_path / "d.jsonl", ROWS)), em_rounds=rounds,
                                                   m_validation=0.4))
    task.setup(tok, len(tok))
    held = held_out_examples(len(ROWS), 0.4, 0)
    expected = [tp.key for i, tp in enumerate(task.train_set) if rounds == 0 or i not in held]
    assert len(held) == 2 and [tp.key for tp in task.train_prompts()] == expected


@pytest.mark.parametrize("fitted_better", [True, False])
def test_m_step_keeps_the_fitted_likelihood_only_when_it_predicts_held_out_labels_better(
        tmp_path, tiny_model_dir, monkeypatch, fitted_better):
    calls = []

    def forced(*args):  # the real held-out prediction; the fitted judge's then made better or worse
        out = em_held_out_prediction(*args)
        calls.append(out)
        if len(calls) == 2:
            out["log_prob"] = calls[0]["log_prob"] + (1.0 if fitted_better else -1.0)
        return out

    em_held_out_prediction = em.held_out_prediction
    monkeypatch.setattr(em, "held_out_prediction", forced)
    run = tmp_path / "run"
    extra = ["--task.eval_methods", "gfn_e_step,gfn_em", "--task.calibrate", "true", "--task.m_validation", "0.4"]
    assert main(em_args(tmp_path, tiny_model_dir, run, rounds=1, steps=2, extra=extra)) == 0
    record = json.loads((run / "em.jsonl").read_text())
    assert record["kept"] == ("fitted" if fitted_better else "base model") and len(calls) == 2
    results = json.loads((run / "eval_classification.json").read_text())["results"]
    assert ("judge" in results["gfn_em"]) != fitted_better  # rejected: the E-step's scores, not scored again
    assert -50 < calls[0]["log_prob"] < 0 and 0 <= calls[0]["accuracy"] <= 1
    lora_b = [v for k, v in load_file(run / "likelihood-round-1.safetensors").items() if "lora_B" in k]
    assert lora_b and any(bool(v.any()) for v in lora_b) == fitted_better  # rejected: the fresh adapter, B = 0
    if not fitted_better:  # ... so it judges exactly as the base model
        assert record["label_log_likelihood_after"] == pytest.approx(record["label_log_likelihood_before"], abs=1e-5)


@pytest.mark.parametrize("fitted_better", [True, False])
def test_buffers_are_rescored_only_when_the_judge_changed_and_another_e_step_follows(
        tmp_path, tiny_model_dir, monkeypatch, fitted_better):
    calls, rescored = [], []

    def forced(*args):  # every round's fitted judge made better or worse than the old one
        out = em_held_out_prediction(*args)
        calls.append(out)
        if len(calls) % 2 == 0:
            out["log_prob"] = calls[-2]["log_prob"] + (1.0 if fitted_better else -1.0)
        return out

    def counted(self):
        rescored.append(self.step)
        return rescore(self)

    em_held_out_prediction, rescore = em.held_out_prediction, Trainer.rescore_buffers
    monkeypatch.setattr(em, "held_out_prediction", forced)
    monkeypatch.setattr(Trainer, "rescore_buffers", counted)
    run = tmp_path / "run"
    extra = ["--evaluate", "false", "--task.m_validation", "0.4"]
    assert main(em_args(tmp_path, tiny_model_dir, run, rounds=3, steps=3, extra=extra)) == 0
    kept = [json.loads(line)["kept"] for line in (run / "em.jsonl").read_text().splitlines()]
    assert kept == (["fitted"] * 3 if fitted_better else ["base model", "old judge", "old judge"])
    assert rescored == ([1, 2] if fitted_better else [])  # never after round 3: no E-step follows


@pytest.mark.slow
def test_em_resumes_exactly_across_a_round_boundary(tmp_path, tiny_model_dir):
    full, cut = tmp_path / "full", tmp_path / "cut"
    extra = ["--evaluate", "false", "--checkpoint_every", "50"]
    assert main(em_args(tmp_path, tiny_model_dir, full, rounds=2, steps=4, extra=extra)) == 0
    shutil.copytree(full, cut)  # as if the run died right after round 1's checkpoint
    shutil.rmtree(cut / "checkpoints" / "step-0000004")
    (cut / "likelihood-round-2.safetensors").unlink()
    assert main(em_args(tmp_path, tiny_model_dir, cut, rounds=2, steps=4, extra=extra) + ["--resume"]) == 0
    for name in ("likelihood-round-2.safetensors", "checkpoints/step-0000004/adapter.safetensors"):
        a, b = load_file(full / name), load_file(cut / name)
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_classify_needs_data_and_valid_templates(tmp_path, tiny_model_dir, capsys):
    base = ["train", "classify", "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "r")]
    assert main(base) == 2
    assert "needs its training data" in capsys.readouterr().err
    data = write_rows(tmp_path / "train.jsonl", ROWS)
    assert main(base + ["--data", str(data), "--task.answer_template", "so it is"]) == 2
    assert "answer_template must contain {label}" in capsys.readouterr().err
    assert main(base + ["--data", str(data), "--task.m_validation", "1"]) == 2
    assert "task.m_validation must be in [0, 1), got 1" in capsys.readouterr().err
    assert main(base + ["--data", str(data), "--task.data", str(data)]) == 2
    assert "given both as --data and as --task.data" in capsys.readouterr().err
