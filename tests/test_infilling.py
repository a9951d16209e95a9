"""Story infilling on a tiny model: the story loader, the split, the reward of every prefix against
naive passes, the prior, and training plus evaluation end to end."""

import csv
import json

import pytest
import torch

from gfnlm.cli import main
from gfnlm.core.trajectories import Trajectories
from gfnlm.evaluation.text_metrics import bertscore_f1, bleu4, gleu4, rescale
from gfnlm.infra.errors import GfnlmError
from gfnlm.runs import prepare_model, resolve
from gfnlm.tasks.infilling.stories import COLUMNS, builtin_stories, load_stories_csv

ACTS = [("went to the park", "saw a dog", "the dog ran", "he threw a ball", "the dog brought it back"),
        ("baked a cake", "it was for a party", "the oven was hot", "the cake burned", "she baked another one"),
        ("went to school", "he had a test", "he studied hard", "he got an a", "his mom was proud"),
        ("planted seeds", "she watered them", "the sun came out", "the seeds grew", "she picked flowers")]
NAMES = ["tom", "ann", "sam", "liz", "max", "eve"]
OPTIONS = ["--task.instruction", "fill in", "--task.policy_template", "{instruction}: {beginning} ? {ending} ?",
           "--task.max_len", "12"]


def write_stories(path, n=16):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for i in range(n):
            a = ACTS[i % 4]
            writer.writerow([f"t{i}", "title", f"{NAMES[i % 6]} {a[0]}.", f"{a[1]}.", f"{a[2]}.", f"{a[3]}.",
                             f"{a[4]} {i}."])
    return path


def spec_for(tmp_path, model_dir, **task):
    data = write_stories(tmp_path / "stories.csv")
    values = {"data": str(data), "test_size": "4", "instruction": "fill in",
              "policy_template": "{instruction}: {beginning} ? {ending} ?", "max_len": "12", **task}
    return resolve("infilling", None, {"model": str(model_dir), "lora_r": "4", "task": values})


# ------------------------------------------------------------------------------------------------ data
def test_builtin_stories_are_whole_and_distinct():
    stories = builtin_stories()
    assert len(stories) >= 150
    assert len({s.text for s in stories}) == len(stories)
    assert all(s.middle.endswith(".") and s.ending.endswith(".") for s in stories)


@pytest.mark.parametrize("rows,message", [
    ([["storyid", "sentence1"]], "the header lacks storytitle"),
    ([COLUMNS, ["a", "t", "x.", "", "y.", "z.", "w."]], "line 2: sentence2 is empty"),
    ([COLUMNS, ["a", "t", "x.", "x.", "y.", "z.", "w."], ["a", "t", "x.", "x.", "y.", "z.", "w."]],
     "line 3: story id 'a' appears twice"),
    ([COLUMNS, ["a", "t", "x."]], "line 2: expected 7 fields"),
    ([COLUMNS], "holds no stories"),
])
def test_story_loader_names_the_line_and_the_problem(tmp_path, rows, message):
    path = tmp_path / "s.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(GfnlmError, match=message):
        load_stories_csv(path)


def test_story_loader_refuses_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(GfnlmError, match="does not exist"):
        load_stories_csv(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_bytes(b"storyid\n\xff\n")
    with pytest.raises(GfnlmError, match="not UTF-8"):
        load_stories_csv(tmp_path / "bad.csv")


def test_the_test_split_reaches_no_training_path(tmp_path, tiny_model_dir):
    spec = spec_for(tmp_path, tiny_model_dir, fewshot_examples="3")
    prepare_model(spec)
    task = spec.task
    test_texts = {s.text for s in task.test_stories}
    assert len(task.test_stories) == 4 and not test_texts & {s.text for s in task.train_stories}
    decode = task.tokenizer.decode
    trained_on = [decode(list(e.prompt) + list(e.target)) for e in task.supervised_examples() + task.prior_examples()]
    trained_on += [p.text for p in task.train_prompts()] + [decode(task.fewshot_prefix())]
    for story in task.test_stories:
        assert not any(story.ending in text for text in trained_on)


# ------------------------------------------------------------------------------------------------ reward
@torch.no_grad()
def test_infilling_log_rewards_of_every_prefix_match_naive_passes(tmp_path, tiny_model_dir):
    """log R(z_1..z_i stop) = log p_LM(z_1..z_i . Y | X) with X the bare beginning (not the policy's prompt,
    which also shows Y), one full forward per prefix."""
    spec = spec_for(tmp_path, tiny_model_dir)
    policy = prepare_model(spec)
    task = spec.task
    prompts = task.train_prompts()[:3]
    rows = [[5, 9, 12, 7], [20], [], [3, 3, 18, 25, 6]]
    traj = Trajectories.from_rows([p.ids for p in prompts], [p.key for p in prompts], [0, 1, 2, 1], rows)
    rewards = task.target(policy).log_rewards(traj)
    with policy.base() as model:
        for b in range(traj.batch_size):
            story = task.story_of[traj.row_key(b)]
            x, y = list(task.beginning_ids(story)), task.ending_ids(story)
            assert y[0] == task.stop[0] and x != list(traj.row_prompt(b))
            for i in range(len(rows[b]) + 1):
                seq = x + rows[b][:i] + y
                lp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
                want = sum(float(lp[k - 1, seq[k]]) for k in range(len(x), len(seq)))
                assert float(rewards[b, i]) == pytest.approx(want, abs=1e-4)


# ------------------------------------------------------------------------------------------------ metrics
def test_text_metrics_on_equal_and_unrelated_sentences():
    assert bleu4("the dog ran home.", "the dog ran home.") == pytest.approx(1.0)
    assert gleu4("the dog ran home.", "the dog ran home.") == pytest.approx(1.0)
    assert gleu4("a cat sat", "the dog ran home.") == 0.0
    assert bleu4("a cat sat", "the dog ran home.") < 0.1
    same, other = bertscore_f1(["the dog ran home.", "the dog ran home."], ["the dog ran home.", "taxes rose in may."])
    assert same == pytest.approx(1.0, abs=1e-4) and other < same
    assert rescale(0.6, 0.5) == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------------ end to end
def test_prior_then_train_and_evaluate_every_method(tmp_path, tiny_model_dir):
    data = write_stories(tmp_path / "stories.csv")
    prior = tmp_path / "prior"
    common = ["--data", str(data), "--test_size", "4", "--progress", "false", *OPTIONS]
    assert main(["prior", "infilling", "--model", str(tiny_model_dir), "--out", str(prior), "--epochs", "1",
                 *common]) == 0
    assert json.loads((prior / "gfnlm_prior.json").read_text())["texts"] == 12
    assert main(["prior", "infilling", "--model", str(tiny_model_dir), "--out", str(prior), *common]) == 2
    run = tmp_path / "run"
    assert main(["train", "infilling", "--model", str(prior), "--output_dir", str(run), "--steps", "2",
                 "--trajectories_per_prompt", "3", "--lora_r", "4", "--task.eval_samples", "2",
                 "--task.sft_epochs", "1", "--task.seed_gold", "true", *common]) == 0
    rows = {r["method"]: r for r in json.loads((run / "eval_infilling.json").read_text())["rows"]}
    assert set(rows) == {"prompting", "prompting_fewshot", "beginning_only", "sft", "gfn"}
    for r in rows.values():
        assert 0 <= r["bleu4"] <= 1 and 0 <= r["gleu4"] <= 1 and 0 <= r["coherence_win"] <= 1
        assert r["log_p_zy"] < 0 and r["words"] > 0
    assert (run / "infilling_frontier.png").stat().st_size > 0
