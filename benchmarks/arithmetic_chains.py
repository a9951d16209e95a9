"""Which chains does the arithmetic target prefer? For a few questions, the correct chain of calculator
calls, the chain that stops one call early and the chain that takes one call too many, each scored
as the reward scores it: log p_LM(Z | X) + log p_LM(Y | X, Z) with the correct answer Y, under the
base model after the reward's worked examples. The GFlowNet policy samples in proportion to
exp(total / T); where a wrong chain's total is close to the correct one's, so is its share.

  python benchmarks/arithmetic_chains.py [--config configs/arithmetic-cpu.yaml]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from gfnlm.tasks.arithmetic.data import Problem

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
QUESTIONS = ((7, 6, 4), "++"), ((5, 1, 8), "-+"), ((0, 9, 7), "--"), ((8, 9, 1), "-+"), ((2, 5, 3, 4), "+-+")


def chains_of(problem: Problem) -> dict[str, str]:
    """The correct left-to-right chain, the one that stops a call early, the one that repeats the last operand."""
    steps = problem.rationale.split(" , ")
    repeat = Problem((problem.answer, problem.operands[-1]), problem.operators[-1:])
    return {"correct": " , ".join(steps), "one call early": " , ".join(steps[:-1]),
            "one call too many": " , ".join(steps + [repeat.rationale])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "arithmetic-cpu.yaml"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gfnlm.core.lm_forward import continuation_log_probs
    from gfnlm.runs import prepare_model, resolve

    spec = resolve("arithmetic", args.config, {})
    policy, task = prepare_model(spec), spec.task
    tok, prefix = task.tokenizer, task.few_shot_prefix(task.config.reward_shots)
    rows = []
    for operands, operators in QUESTIONS:
        problem = Problem(operands, tuple(operators))
        expression, answer = problem.expression, problem.answer
        x = tok.encode(problem.query, add_special_tokens=False)
        y = tok.encode(task.config.answer_template.format(answer=answer), add_special_tokens=False)
        named = chains_of(problem)
        zs = [task.chain_tokens(z)[0] for z in named.values()]
        with policy.base() as model:
            log_pz = continuation_log_probs(model, [x] * len(zs), zs, shared_prefix=prefix)
            log_py = continuation_log_probs(model, [tuple(x) + z for z in zs], [y] * len(zs), shared_prefix=prefix)
        for (kind, z), a, b in zip(named.items(), log_pz.tolist(), log_py.tolist()):
            rows.append({"question": expression, "answer": answer, "chain": kind, "text": z,
                         "log_p_z": a, "log_p_y": b, "total": a + b})
    temperature = spec.config.reward_temp_end
    lines = [f"| question | chain | Z | log p(Z ∣ X) | log p(Y ∣ X, Z) | total | exp((total - correct) / {temperature:g}) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        correct = next(o["total"] for o in rows if o["question"] == r["question"] and o["chain"] == "correct")
        lines.append(f"| {r['question']} = {r['answer']} | {r['chain']} | {r['text']} | {r['log_p_z']:.2f} | "
                     f"{r['log_p_y']:.2f} | {r['total']:.2f} | {math.exp((r['total'] - correct) / temperature):.3g} |")
    table = "\n".join(lines)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "arithmetic_chains.json").write_text(json.dumps(rows, indent=1))
    (OUT / "arithmetic_chains.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
