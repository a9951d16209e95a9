"""Evaluation of story infilling: N middles per test story and method, then reference metrics, the
target's likelihood, a coherence judge and diversity.

Methods (all sample under the same action space: one sentence, stop at "."):
  prompting          the loaded model (p_LM) given the policy's instruction prompt with X and Y;
  prompting_fewshot  the same after ``fewshot_examples`` solved training stories;
  beginning_only     the loaded model continuing X alone (left to right, the ending unseen);
  sft                a fresh adapter trained (TRL SFT) on the policy's prompt -> gold middle;
  gfn                the trained policy.
Per sample: BLEU-4 and GLEU-4 against the gold middle (nltk), BERTScore F1 (MiniLM, raw and rescaled,
text_metrics.py), log p_LM(Z . Y | X) (= log p_LM(X Z Y) - log p_LM(X)), and coherence: log p_LM(Y | X Z)
minus log p_LM(Y | X Z') for the gold middle Z' of another test story (the judge is the base model
itself; no external LLM is reachable). Per story: embedding diversity of its N samples.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from gfnlm.core.lm_forward import continuation_log_probs
from gfnlm.core.task import EvalResult
from gfnlm.evaluation.diversity import distinct_n, embedding_diversity
from gfnlm.evaluation.plots import plot_frontier
from gfnlm.evaluation.tables import write_table
from gfnlm.evaluation.text_metrics import bertscore_baseline, bertscore_f1, bleu4, gleu4, rescale
from gfnlm.inference.sampling import sample_per_prompt
from gfnlm.infra.distributed import current, gather_flat, my_range, process_generator

SFT_ADAPTER = "sft"
COLUMNS = ["method", "bleu4", "gleu4", "bertscore", "bertscore_rescaled", "coherence", "coherence_win",
           "diversity", "distinct_2", "log_p_zy", "words", "seconds"]
HEADERS = {"bleu4": "BLEU-4", "gleu4": "GLEU-4", "bertscore": "BERTScore F1", "bertscore_rescaled": "BERTScore (rescaled)",
           "coherence": "coherence (nats)", "coherence_win": "beats a random middle", "diversity": "embedding diversity",
           "distinct_2": "distinct-2", "log_p_zy": "log p(Z . Y | X)", "words": "words", "seconds": "seconds"}


def evaluate_infilling(task, policy, run_dir: Path, config) -> EvalResult:
    """Under a launcher each process samples a block of the test stories (from its own seed; rank 0 keeps
    the run's), the SFT baseline trains on every process together, and rank 0 scores all the samples."""
    c = task.config
    stories, prompts = task.test_stories, task.test_set
    if not stories:
        return EvalResult({}, [], "No test stories; nothing evaluated.")
    processes = current()
    part = my_range(len(stories))
    space = task.action_space().to(policy.device)
    generator = process_generator(c.seed, policy.device, processes)
    samples, seconds = {}, {}
    for method in c.methods():
        started = time.perf_counter()
        if method == "sft":
            train_sft_baseline(task, policy, config)
        context = (contextlib.nullcontext(policy.model) if method == "gfn" else
                   policy.adapter(SFT_ADAPTER) if method == "sft" else policy.base())
        inputs = [task.beginning_ids(s) for s in stories] if method == "beginning_only" else [tp.ids for tp in prompts]
        prefix = task.fewshot_prefix() if method == "prompting_fewshot" else ()
        with context as model:
            drawn = sample_per_prompt(model, space, inputs[part.start: part.stop], c.eval_samples,
                                      c.eval_temperature, generator, c.eval_batch, prefix, progress=config.progress,
                                      desc=method)
        samples[method] = gather_flat(drawn)
        seconds[method] = time.perf_counter() - started
    if not processes.is_main:
        return EvalResult({}, [], "")  # rank 0 scores every sample and writes the results
    baseline = bertscore_baseline([s.middle for s in task.train_stories], seed=c.seed)
    rows = [dict(method=m, **score_method(task, policy, samples[m], baseline), seconds=seconds[m]) for m in samples]
    out = Path(run_dir)
    table = write_table(rows, COLUMNS, out / "eval_infilling", HEADERS)
    shown = [{"story": s.id, "beginning": s.beginning, "ending": s.ending, "gold": s.middle,
              **{m: [task.tokenizer.decode(z).strip() + "." for z in samples[m][i][:3]] for m in samples}}
             for i, s in enumerate(stories[:10])]
    (out / "eval_infilling.json").write_text(json.dumps({"rows": rows, "bertscore_baseline": baseline,
                                                        "examples": shown}, indent=1))
    plot = plot_frontier(out / "infilling_frontier.png", rows, "diversity", "gleu4", "embedding diversity of N samples",
                         "GLEU-4 against the gold middle",
                         f"infilling: {len(stories)} test stories x {c.eval_samples} samples")
    text = "\n".join([
        f"{len(stories)} test stories, N = {c.eval_samples} samples per story and method at temperature "
        f"{c.eval_temperature}. BERTScore: all-MiniLM-L6-v2 F1, rescaled with the mean F1 of random pairs of "
        f"training middles (b = {baseline:.3f}). Coherence: log p_LM(Y | X Z) - log p_LM(Y | X Z') with Z' the gold "
        f"middle of another test story. Gold middles seed the buffer: {c.seed_gold}.", "", table, "",
        "Examples:", ""] + [f"- {e['beginning']} **[{e.get('gfn', e.get(c.methods()[0]))[0]}]** {e['ending']} "
                            f"(gold: {e['gold']})" for e in shown[:4]])
    return EvalResult({r["method"]: r for r in rows}, [plot], text)


def train_sft_baseline(task, policy, config) -> None:
    from gfnlm.baselines.sft import SupervisedSettings, supervised_finetune

    c = task.config
    if SFT_ADAPTER not in policy.model.peft_config:
        policy.add_adapter(SFT_ADAPTER, seed=c.seed)
    with policy.adapter(SFT_ADAPTER, train=True):
        supervised_finetune(policy, task.supervised_examples(), SupervisedSettings(
            epochs=c.sft_epochs, lr=c.sft_lr, batch_size=8, seed=c.seed, progress=config.progress))


@torch.no_grad()
def score_method(task, policy, drawn: list[list[list[int]]], baseline: float) -> dict:
    stories = task.test_stories
    tok = task.tokenizer
    texts = [[tok.decode(z).strip() + "." for z in zs] for zs in drawn]
    pairs = [(i, k) for i, zs in enumerate(drawn) for k in range(len(zs))]
    hyps = [texts[i][k] for i, k in pairs]
    refs = [stories[i].middle for i, _ in pairs]
    bert = bertscore_f1(hyps, refs)
    # A fixed derangement: story i is judged against the gold middle of story i+1.
    other = [task.middle_ids(stories[(i + 1) % len(stories)]) for i in range(len(stories))]
    begin = [task.beginning_ids(s) for s in stories]
    ending = [task.ending_ids(s) for s in stories]
    with policy.base() as model:
        log_p = continuation_log_probs(model, [begin[i] for i, _ in pairs],
                                       [tuple(drawn[i][k]) + tuple(ending[i]) for i, k in pairs])
        judged = continuation_log_probs(model, [begin[i] + tuple(drawn[i][k]) for i, k in pairs],
                                        [ending[i] for i, _ in pairs])
        random_middle = continuation_log_probs(model, [begin[i] + other[i] for i in range(len(stories))], ending)
    coherence = [float(judged[n] - random_middle[i]) for n, (i, _) in enumerate(pairs)]
    return {
        "bleu4": statistics.fmean(bleu4(h, r) for h, r in zip(hyps, refs)),
        "gleu4": statistics.fmean(gleu4(h, r) for h, r in zip(hyps, refs)),
        "bertscore": statistics.fmean(bert),
        "bertscore_rescaled": rescale(statistics.fmean(bert), baseline),
        "coherence": statistics.fmean(coherence),
        "coherence_win": statistics.fmean(float(x > 0) for x in coherence),
        "diversity": statistics.fmean(embedding_diversity(t) for t in texts),
        "distinct_2": statistics.fmean(distinct_n(t, 2) for t in texts),
        "log_p_zy": float(log_p.mean()),
        "words": statistics.fmean(len(h.split()) for h in hyps),
    }

