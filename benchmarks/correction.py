"""Amortize, then correct: the trained continuation policy vs the base model as the proposal of
importance sampling and SMC for p_LM(Z | X)^(1/T), at an equal budget of generated tokens.

Needs the run of benchmarks/continuation.py (benchmarks/out/continuation; trained here if missing).
For each held-out prompt, each method produces G outputs, each one draw from its own group of
particles. The base model writes sentences about twice as long as the policy, so it gets fewer
particles: its particle count is set so that its generated tokens match the policy's (measured on
the same prompts with plain sampling first).

  python benchmarks/correction.py [--prompts 10] [--groups 4] [--particles 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10, help="held-out prompts used")
    parser.add_argument("--groups", type=int, default=4, help="outputs per prompt and method")
    parser.add_argument("--particles", type=int, default=16, help="particles per output for the policy proposal")
    args = parser.parse_args()
    run_dir = OUT / "continuation"
    if not (run_dir / "eval_continuation_summary.json").is_file():
        print("no continuation run yet: running benchmarks/continuation.py first", flush=True)
        if subprocess.run([sys.executable, str(ROOT / "benchmarks" / "continuation.py")]).returncode != 0:
            return 1

    import torch

    from gfnlm.correction import importance_sample, smc, terminal_log_rewards
    from gfnlm.evaluation.diversity import embedding_diversity, sentence_encoder
    from gfnlm.evaluation.plots import plot_frontier
    from gfnlm.evaluation.sampling import sample_completions
    from gfnlm.evaluation.tables import markdown_table
    from gfnlm.runs import load_run, load_trained_policy

    started = time.perf_counter()
    spec = load_run(run_dir)
    policy = load_trained_policy(spec, run_dir)
    task, T = spec.task, spec.config.reward_temp_end
    space, target = task.action_space().to(policy.device), task.target(policy)
    prompts = task.test_set[: args.prompts]
    encoder = sentence_encoder()
    tok = policy.tokenizer

    # Mean sentence length of each proposal (tokens incl. the stop), to equalize the token budget.
    lengths = {}
    for name in ("policy", "base"):
        n = 0
        for i, p in enumerate(prompts):
            gen = torch.Generator().manual_seed(i)
            if name == "base":
                with policy.base() as model:
                    rows = sample_completions(model, space, p.ids, 16, generator=gen, progress=False)
            else:
                rows = sample_completions(policy.model, space, p.ids, 16, generator=gen, progress=False)
            n += sum(len(r) + 1 for r in rows)
        lengths[name] = n / (16 * len(prompts))
    base_particles = max(1, round(args.particles * lengths["policy"] / lengths["base"]))
    print(f"mean tokens per sentence: policy {lengths['policy']:.1f}, base {lengths['base']:.1f} -> base proposal "
          f"gets {base_particles} particles per output for the policy's {args.particles}", flush=True)

    methods = [("policy", "none", 1), ("policy", "is", args.particles), ("policy", "smc", args.particles),
               ("base", "is", base_particles), ("base", "smc", base_particles), ("base", "none", 1)]
    rows_out = []
    for proposal, correct, particles in methods:
        label = f"{proposal} + {correct.upper()} (N={particles})" if correct != "none" else f"{proposal}, no correction"
        stats = {"loglik": [], "diversity": [], "log_z": [], "kl": [], "ess": [], "tokens": 0, "seconds": 0.0}
        for i, p in enumerate(prompts):
            gen = torch.Generator().manual_seed(1000 + i)
            t0 = time.perf_counter()
            with (policy.base() if proposal == "base" else contextlib.nullcontext(policy.model)) as model:
                method = smc if correct == "smc" else importance_sample
                out = method(model, space, target, p.ids, args.groups, particles, T, gen)
            stats["seconds"] += time.perf_counter() - t0
            stats["tokens"] += out.generated_tokens
            loglik = terminal_log_rewards(target, p.ids, out.completions, policy.device)
            stats["loglik"].append(float(loglik.mean()))
            stats["diversity"].append(embedding_diversity([tok.decode(c) for c in out.completions], encoder))
            stats["log_z"].append(float(torch.logsumexp(out.log_z, 0)) - math.log(len(out.log_z)))
            stats["ess"].append(float(out.ess.mean()))
            if correct == "is":  # KL(q || p_T) = log Z - E_q[log w], from the proposal's own samples
                stats["kl"].append(float((out.log_z - out.log_weights.mean(-1)).mean()))
        outputs = args.groups * len(prompts)
        rows_out.append({
            "method": label, "proposal": proposal, "correction": correct, "particles": particles,
            "tokens_per_output": stats["tokens"] / outputs, "mean_loglik": statistics.mean(stats["loglik"]),
            "diversity": statistics.mean(stats["diversity"]),
            "log_z_est": statistics.mean(stats["log_z"]) if correct != "none" else None,
            "kl_q_p": statistics.mean(stats["kl"]) if stats["kl"] else None,
            "ess_fraction": statistics.mean(stats["ess"]) if correct != "none" else None,
            "seconds": stats["seconds"]})
        print(f"{label}: {rows_out[-1]['tokens_per_output']:.0f} tokens/output, log-lik "
              f"{rows_out[-1]['mean_loglik']:.2f}, ESS/N {rows_out[-1]['ess_fraction']}", flush=True)
    columns = ["method", "tokens_per_output", "mean_loglik", "diversity", "log_z_est", "kl_q_p", "ess_fraction",
               "seconds"]
    headers = {"tokens_per_output": "generated tokens / output", "mean_loglik": "mean log p(Z ∣ X) of outputs",
               "diversity": "embedding diversity", "log_z_est": "log Z(X) estimate", "kl_q_p": "KL(q ‖ p_T) (IS)",
               "ess_fraction": "ESS / N"}
    table = markdown_table(rows_out, columns, headers)
    by = {(r["proposal"], r["correction"]): r for r in rows_out}
    claims = {
        "policy ESS/N > base ESS/N (IS)": by[("policy", "is")]["ess_fraction"] > by[("base", "is")]["ess_fraction"],
        "policy ESS/N > base ESS/N (SMC)": by[("policy", "smc")]["ess_fraction"] > by[("base", "smc")]["ess_fraction"],
        "policy KL < base KL (IS)": by[("policy", "is")]["kl_q_p"] < by[("base", "is")]["kl_q_p"],
    }
    plot = plot_frontier(OUT / "correction_frontier.png", rows_out, "diversity", "mean_loglik",
                         "embedding diversity of the outputs", "mean log p_LM(Z | X) of the outputs",
                         f"amortize then correct, T = {T:g}, equal token budget")
    result = {"T": T, "prompts": len(prompts), "groups": args.groups, "policy_particles": args.particles,
              "base_particles": base_particles, "mean_tokens": lengths, "methods": rows_out, "claims": claims,
              "seconds": time.perf_counter() - started, "plot": str(plot)}
    (OUT / "correction.json").write_text(json.dumps(result, indent=1))
    print("\n" + table)
    for claim, ok in claims.items():
        print(f"  [{'yes' if ok else 'no '}] {claim}")
    print(f"Total {result['seconds']:.0f} s. Plot: {plot}\nSaved {OUT / 'correction.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
