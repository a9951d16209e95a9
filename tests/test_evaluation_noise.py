"""benchmarks/evaluation_noise.py: each disjoint set of samples is scored as its own evaluation."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from gfnlm.evaluation.diversity import embedding_diversity
from tests.conftest import FixedEncoder

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "evaluation_noise.py"
spec = importlib.util.spec_from_file_location("evaluation_noise_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench
spec.loader.exec_module(bench)


def write_samples(run: Path, stem: str, prompts: list[list[str]]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"prompt": f"p{i}", "method": "gfn", "completions": texts,
                         "log_likelihoods": [-float(len(t)) - i for t in texts]}) for i, texts in enumerate(prompts)]
    lines.append(json.dumps({"prompt": "p0", "method": "sampling", "completions": ["x"], "log_likelihoods": [0.0]}))
    (run / f"{stem}_samples.jsonl").write_text("\n".join(lines) + "\n")


def test_each_set_is_scored_like_an_evaluation_of_its_own(tmp_path):
    prompts = [["a", "bb", "a", "ccc", "dd", "a"], ["e", "ff", "gg", "e", "h", "ii"]]
    write_samples(tmp_path, "eval_T1-n6", prompts)
    encoder = FixedEncoder({t for texts in prompts for t in texts})
    records = bench.read_samples(tmp_path, "eval_T1-n6")
    assert len(records) == 2  # the other method's record is left out
    f = bench.group_figures(records, 3, encoder)

    def figures(parts):  # brute force: per prompt, then the mean over prompts
        return (statistics.fmean(statistics.fmean(-len(t) - i for t in part) for i, part in enumerate(parts)),
                statistics.fmean(embedding_diversity(part, encoder) for part in parts))

    assert (f["mean_loglik"], f["diversity"]) == pytest.approx(figures(prompts))
    for k, group in enumerate(f["groups"]):
        expected = figures([texts[2 * k: 2 * k + 2] for texts in prompts])
        assert (group["mean_loglik"], group["diversity"]) == pytest.approx(expected)
    assert f["group_sd"]["diversity"] == pytest.approx(statistics.stdev(g["diversity"] for g in f["groups"]))
    assert f["group_sd"]["diversity"] > 0
    with pytest.raises(SystemExit, match="do not split"):
        bench.group_figures(records, 4, encoder)
    with pytest.raises(SystemExit, match="missing"):
        bench.read_samples(tmp_path, "eval_T0.8")
