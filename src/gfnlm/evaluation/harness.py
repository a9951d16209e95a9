"""The evaluation harness shared by the text tasks: for each test prompt, N samples per method, then
likelihood, diversity and (where q is known exactly) how well the sampler matches the target.

Methods: "gfn" (the trained policy) and the decoding baselines of ``decoding.py`` run on the base
model (adapter off). For "gfn" and plain "sampling" (the policy before training: the base model
under the same action space) q(Z) is exact, so importance estimates of log Z(X), KL(q || p_T), the
ESS and p_T's own mean log-likelihood (whether q is sharper or flatter than its target) are reported; for
the other methods they are undefined. The corrected methods ("gfn_is", "gfn_smc", "base_is", "base_smc",
see ``corrected.py``) spend ``particles`` policy samples' worth of generated tokens on each output and
report their own log Z and ESS estimates (and KL for IS). "base_rejection" gives each output the first of
as many base-model draws (the same token budget) whose reward is not zero: for targets with hard
constraints.

A target may give some outputs zero reward (log R = -inf): the likelihood columns average the others and
"R > 0" gives their fraction (shown when some method has outputs with zero reward).

Under a launcher the prompts are split over the processes (contiguous blocks) and the results gathered
on every process; each prompt's samples are seeded by (seed, prompt index), so the table equals one
process's (its "seconds" are the slowest process's).
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gfnlm.baselines.decoding import decode_baseline
from gfnlm.core.action_space import ActionSpace
from gfnlm.core.policy_scores import score_policy
from gfnlm.core.task import TaskPrompt
from gfnlm.core.trajectories import Trajectories
from gfnlm.evaluation.corrected import base_particles, run_corrected
from gfnlm.evaluation.diversity import (
    cosine_similarities,
    distinct_n,
    diversity_from_similarities,
    sentence_encoder,
    unique_fraction,
)
from gfnlm.evaluation.methods import ALL_METHODS, CORRECTED, REJECTION
from gfnlm.evaluation.plots import plot_frontier
from gfnlm.evaluation.tables import write_table
from gfnlm.inference.correction import terminal_log_rewards
from gfnlm.inference.importance import importance_estimates
from gfnlm.inference.rejection import rejection_sample
from gfnlm.inference.sampling import sample_completions
from gfnlm.infra.distributed import current, gather_flat, my_range
from gfnlm.infra.seeding import derive_seed, torch_generator
from gfnlm.model.policy import Policy
from gfnlm.targets import Target

COLUMNS = ["method", "mean_loglik", "max_loglik", "nonzero_reward", "diversity", "distinct_1", "distinct_2", "unique",
           "mean_length", "tokens_per_output", "particles", "log_z_est", "kl_q_p", "ess_fraction",
           "target_loglik_est", "target_diversity_est", "seconds"]
HEADERS = {"mean_loglik": "mean log p(Z ∣ X)", "max_loglik": "max log p(Z ∣ X)", "nonzero_reward": "R > 0",
           "diversity": "embedding diversity",
           "distinct_1": "distinct-1", "distinct_2": "distinct-2", "unique": "unique fraction",
           "mean_length": "tokens", "tokens_per_output": "generated tokens / output",
           "particles": "particles / output", "log_z_est": "log Z(X) estimate", "kl_q_p": "KL(q ‖ p_T) (IS)",
           "ess_fraction": "ESS / N", "target_loglik_est": "p_T's mean log p(Z ∣ X) (IS)",
           "target_diversity_est": "p_T's embedding diversity (IS)"}


def _trajectories(prompt: Sequence[int], rows: Sequence[Sequence[int]], device) -> Trajectories:
    return Trajectories.from_rows([tuple(prompt)], ["eval"], [0] * len(rows), [list(r) for r in rows], device=device)


@torch.no_grad()
def sequence_log_probs(model, space: ActionSpace, prompt: Sequence[int], rows, device) -> list[float]:
    """log q(Z stop | X) of whole completions under a model and action space."""
    traj = _trajectories(prompt, rows, device)
    scores = score_policy(model, space, traj)
    index = torch.arange(traj.batch_size, device=device)
    return (scores.log_pf.sum(-1) + scores.log_stop[index, traj.lengths]).tolist()


def evaluate_methods(policy: Policy, space: ActionSpace, target: Target, prompts: Sequence[TaskPrompt],
                     methods: Sequence[str], n: int, temperature: float, seed: int, out_dir: Path,
                     stem: str, title: str, top_p: float = 0.95, progress: bool = True, particles: int = 8,
                     extra_metrics=None, headers: dict | None = None) -> tuple[list[dict], str, Path]:
    """Run every method on every prompt; write ``stem``.csv/.md/.json, samples and a frontier plot.
    ``extra_metrics(prompt, rows, texts)``: a task's own per-prompt metrics (a dict; its keys become columns,
    named by ``headers``, which may also rename the standard columns)."""
    unknown = [m for m in methods if m not in ALL_METHODS + (REJECTION,)]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(ALL_METHODS + (REJECTION,))}")
    device = policy.device
    space = space.to(device)
    tok = policy.tokenizer
    encoder = sentence_encoder()
    seconds = {m: 0.0 for m in methods}
    mine = []  # (prompt index, method, metrics, sample) of this process's prompts
    for p_index in tqdm(my_range(len(prompts)), desc="evaluate", disable=not progress, dynamic_ncols=True):
        prompt = prompts[p_index]
        plain_rows: dict[str, list[list[int]]] = {}  # "gfn" / "sampling" rows, reused to match token budgets
        for method in methods:
            started = time.perf_counter()
            method_seed = derive_seed(seed, "evaluate", p_index)
            extra: dict = {}
            generated = None
            if method == "gfn":
                generator = torch_generator(device, method_seed)
                rows = sample_completions(policy.model, space, prompt.ids, n, generator=generator, progress=False)
            elif method in CORRECTED or method == REJECTION:
                count = particles
                if method.startswith("base_"):
                    count = base_particles(particles, *(_mean_tokens(policy, space, prompt.ids, which, n,
                                                                    method_seed, plain_rows)
                                                        for which in ("gfn", "sampling")))
                generator = torch_generator(device, method_seed)
                if method == REJECTION:
                    with policy.base() as model:
                        drawn = rejection_sample(model, space, prompt.ids, n, count, lambda rows: terminal_log_rewards(
                            target, prompt.ids, rows, device).tolist(), generator)
                    rows, generated, extra = drawn.rows, drawn.generated_tokens, {"particles": count}
                else:
                    out = run_corrected(method, policy, space, target, prompt.ids, n, count, temperature, generator)
                    rows, generated, extra = out.rows, out.generated_tokens, {**out.metrics, "particles": count}
            else:
                with policy.base() as model:
                    rows = decode_baseline(method, model, space, prompt.ids, n, method_seed,
                                           temperature=temperature, top_p=top_p)
            seconds[method] += time.perf_counter() - started
            if method in ("gfn", "sampling"):
                plain_rows[method] = rows
            texts = [tok.decode(r) for r in rows]
            loglik = terminal_log_rewards(target, prompt.ids, rows, device).tolist()
            sims = cosine_similarities(texts, encoder)  # encoded once for the samples' and the target's diversity
            rewarded = [v for v in loglik if v > -math.inf]
            metrics = {"mean_loglik": statistics.mean(rewarded) if rewarded else math.nan,
                       "max_loglik": max(rewarded, default=math.nan), "nonzero_reward": len(rewarded) / len(loglik),
                       **(extra_metrics(prompt, rows, texts) if extra_metrics else {}),
                       "diversity": diversity_from_similarities(sims), "distinct_1": distinct_n(texts, 1),
                       "distinct_2": distinct_n(texts, 2), "unique": unique_fraction(texts),
                       "mean_length": statistics.mean(len(r) for r in rows),
                       "tokens_per_output": (generated if generated is not None
                                             else sum(len(r) + 1 for r in rows)) / len(rows), **extra}
            if method in ("gfn", "sampling"):
                if method == "gfn":
                    log_q = sequence_log_probs(policy.model, space, prompt.ids, rows, device)
                else:
                    with policy.base() as model:
                        log_q = sequence_log_probs(model, space, prompt.ids, rows, device)
                est = importance_estimates(loglik, log_q, temperature)
                metrics.update(log_z_est=est["log_z"], kl_q_p=est["kl_q_p"], ess_fraction=est["ess_fraction"],
                               target_loglik_est=est["target_log_reward"],
                               target_diversity_est=diversity_from_similarities(sims, est["weights"]))
            mine.append((p_index, method, metrics, {"prompt": prompt.text, "method": method, "completions": texts,
                                                    "log_likelihoods": loglik}))
    everything = sorted(gather_flat(mine), key=lambda r: (r[0], methods.index(r[1])))  # one process's order
    per_prompt = {m: [metrics for _, method, metrics, _ in everything if method == m] for m in methods}
    samples = [sample for *_, sample in everything]
    slowest = {m: max(s[m] for s in current().gather(seconds)) for m in methods}
    rows = []
    for method in methods:
        keys = per_prompt[method][0].keys()
        row = {"method": method, **{k: _mean_of_defined(d[k] for d in per_prompt[method]) for k in keys}}
        row["seconds"] = slowest[method]
        rows.append(row)
    out_dir = Path(out_dir)
    columns = [c for c in COLUMNS if c != "nonzero_reward" or any(r["nonzero_reward"] < 1 for r in rows)]
    columns[1:1] = [k for k in rows[0] if k not in COLUMNS]  # the task's own metrics, after the method
    markdown = write_table(rows, columns, out_dir / stem, {**HEADERS, **(headers or {})})
    (out_dir / f"{stem}.json").write_text(json.dumps({"methods": rows, "per_prompt": per_prompt, "n": n,
                                                       "temperature": temperature, "prompts": len(prompts)}, indent=1))
    with open(out_dir / f"{stem}_samples.jsonl", "w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps(s) + "\n")
    plot = plot_frontier(out_dir / f"{stem}_frontier.png", rows, "diversity", "mean_loglik",
                         "embedding diversity (1 - mean pairwise cosine)",
                         {**HEADERS, **(headers or {})}["mean_loglik"].replace("∣", "|"), title)
    return rows, markdown, plot


def _mean_of_defined(values) -> float:
    """The mean over prompts of a metric, leaving out prompts where it is undefined (no output with R > 0)."""
    defined = [v for v in values if not math.isnan(v)]
    return statistics.mean(defined) if defined else math.nan


def _mean_tokens(policy: Policy, space: ActionSpace, prompt_ids: Sequence[int], which: str, n: int, seed: int,
                 plain_rows: dict, pilot: int = 16) -> float:
    """Generated tokens (with the stop) per plain sample of the policy ("gfn") or the base model ("sampling")
    on this prompt: from the method's own rows when it ran with at least ``pilot`` samples, else from
    max(n, pilot) fresh samples (recorded for reuse)."""
    if len(plain_rows.get(which, ())) < pilot:
        generator = torch_generator(policy.device, seed, "mean tokens")
        with contextlib.nullcontext(policy.model) if which == "gfn" else policy.base() as model:
            plain_rows[which] = sample_completions(model, space, prompt_ids, max(n, pilot), generator=generator,
                                                   progress=False)
    return statistics.mean(len(r) + 1 for r in plain_rows[which])
