"""Measuring one throughput configuration on the embedded model, each in a fresh process (so that its peak
memory is its own), and that process's side: run as a script, it measures and prints one ``RESULT {json}``
line.

  train: training steps at one configuration (sample + reward of every prefix + policy scores + loss +
         backward + optimizer step), one prompt per step in the reference's order.
  reward: the cost of the prefix reward for a multi-token answer Y (PromptAnswerLikelihood) against the
         one-token LMLikelihood: one log_rewards call over a batch of trajectories.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The 40 OpenWebText prompts of the reference run, 0-based lines of its prompts.txt, in the order it used them.
REFERENCE_LINES = [331, 747, 448, 527, 760, 631, 571, 271, 411, 98, 78, 679, 781, 371, 489, 508, 700, 204, 604, 333,
                   338, 94, 701, 717, 818, 244, 716, 283, 951, 9, 576, 115, 613, 841, 706, 791, 413, 348, 205, 634]
UNTIMED_STEPS = 2  # the first steps warm up allocators and kernels


def run_streaming(command: list[str], env: dict | None = None) -> tuple[int, list[str]]:
    """Run ``command``, echoing its output line by line as it comes (except RESULT lines); (exit code, lines)."""
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, bufsize=1) as proc:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if not line.startswith("RESULT "):
                print(line, end="", flush=True)
    return proc.returncode, lines


def in_fresh_process(arguments: list[str], processes: int = 1) -> dict | None:
    """This script run with ``arguments`` (under torchrun when ``processes`` > 1): its RESULT, None if it failed."""
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    code, lines = run_streaming(launcher + [__file__, *arguments], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    results = [line for line in lines if line.startswith("RESULT ")]
    if code != 0 or not results:
        print(f"measuring {' '.join(arguments[:2])} failed (exit code {code})", file=sys.stderr, flush=True)
        return None
    return json.loads(results[-1][len("RESULT "):])


def train_in_fresh_process(name: str, spec: dict, steps: int, prompts_file: Path, processes: int = 1) -> dict | None:
    return in_fresh_process(["train", name, "--spec", json.dumps(spec), "--steps", str(steps),
                             "--prompts", str(prompts_file)], processes)


def reward_in_fresh_process(answer_tokens: int, spec: dict, prompts_file: Path, repeats: int) -> dict | None:
    return in_fresh_process(["reward", str(answer_tokens), "--spec", json.dumps(spec), "--repeats", str(repeats),
                             "--prompts", str(prompts_file)])


def reference_texts(prompts_file: Path) -> list[str]:
    lines = prompts_file.read_text(encoding="utf-8").splitlines()
    return [lines[i] for i in REFERENCE_LINES]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark so the training peak excludes model loading (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def measure_training(name: str, spec: dict, steps: int, prompts_file: Path) -> dict | None:
    """Train ``steps`` steps at ``spec`` in this process (one of several under torchrun); rank 0's figures."""
    import torch

    from gfnlm.core.action_space import ActionSpace
    from gfnlm.core.config import TrainConfig
    from gfnlm.core.task import Task, TaskPrompt
    from gfnlm.core.trainer import Trainer
    from gfnlm.infra.distributed import start
    from gfnlm.infra.seeding import seed_globally
    from gfnlm.model.loading import load_base_model
    from gfnlm.model.policy import LoraSettings, Policy
    from gfnlm.targets import LMLikelihood

    seed_globally(0)
    processes = start("cpu")  # one process, or DDP over gloo under torchrun
    model, tokenizer = load_base_model("embedded", dtype=spec["dtype"], device=processes.device)
    policy = Policy(model, tokenizer, LoraSettings(spec["lora_r"], spec["lora_alpha"], "all-linear"), seed=0)
    prompts = []
    for i, text in enumerate(reference_texts(prompts_file)):
        ids = tuple(tokenizer.encode(text, add_special_tokens=False))
        if spec["prompt_tokens"]:
            ids = ids[: spec["prompt_tokens"]]
        prompts.append(TaskPrompt(text, ids, f"p{i}"))
    period = tokenizer.encode(".", add_special_tokens=False)
    # As in the reference: no newlines, tabs or special tokens inside a sentence.
    banned = [i for i in range(len(tokenizer)) if any(c in tokenizer.decode([i]) for c in "\n\t\r")]
    banned += [t for t in tokenizer.all_special_ids if t not in period]

    class Sentences(Task):
        name, Config = "sentences", dict

        def setup(self, tokenizer, vocab_size):
            pass

        def train_prompts(self):
            return prompts

        def action_space(self):
            return ActionSpace(policy.vocab_size, period, min_len=1, max_len=spec["max_len"], banned_tokens=banned)

        def target(self, policy):
            return LMLikelihood(policy, period)

    config = TrainConfig(objective="subtb", subtb_lambda=1.0, steps=steps, trajectories_per_prompt=spec["n"],
                         lr=spec["lr"], warmup_steps=20, replay_prob=0.0, tempered_prob=spec["tempered_prob"],
                         tempered_min=0.5, tempered_max=2.0, checkpoint_every=10**9, progress=False)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Sentences({}), policy, Path(run_dir), processes)
        reset = reset_peak_rss()
        rows = []
        for step in range(steps):
            trainer.prompts = [prompts[step % len(prompts)]]  # one prompt per step, in the listed order
            started = time.perf_counter()
            row = trainer.train_step()
            row["wall"] = time.perf_counter() - started
            rows.append(row)
            if processes.is_main:
                print(f"  {name} step {step + 1}/{steps}: {row['wall']:.2f} s, {row['sampled_tokens']} tokens "
                      f"(all processes)", flush=True)
    if not processes.is_main:
        return None
    timed = rows[UNTIMED_STEPS:]
    seconds = statistics.median(r["wall"] for r in timed)
    total_wall = sum(r["wall"] for r in timed)
    world = processes.world_size
    return {
        "config": name, **spec, "processes": world, "steps_timed": len(timed), "median_s_per_step": seconds,
        "steps_per_s": 1 / seconds, "sequences_per_s": world * spec["n"] / seconds,
        "sampled_tokens_per_s": sum(r["sampled_tokens"] for r in timed) / total_wall,
        "mean_prompt_tokens": statistics.mean(len(p.ids) for p in prompts),
        "mean_generated_tokens": sum(r["length"] for r in timed) / len(timed),
        "peak_rss_gib": peak_rss_gib(), "training_peak_rss_gib": current_peak_gib() if reset else float("nan"),
        "torch_threads": torch.get_num_threads(), "step_walls": [r["wall"] for r in rows],
    }


def measure_reward(answer_tokens: int, spec: dict, prompts_file: Path, repeats: int, batch: int = 8,
                   length: int = 30) -> dict:
    """Median seconds of one log_rewards call over ``batch`` trajectories of ``length`` tokens (real text of
    the reference prompts), for an answer Y of ``answer_tokens`` tokens and for the one-token terminator "."."""
    import torch

    from gfnlm.core.trajectories import Trajectories
    from gfnlm.model.loading import load_base_model
    from gfnlm.model.policy import LoraSettings, Policy
    from gfnlm.targets import LMLikelihood, PromptAnswerLikelihood

    model, tokenizer = load_base_model("embedded", dtype=spec["dtype"], device="cpu")
    policy = Policy(model, tokenizer, LoraSettings(spec["lora_r"], spec["lora_alpha"], "all-linear"), seed=0)
    texts = reference_texts(prompts_file)
    prompt = tokenizer.encode(texts[0], add_special_tokens=False)
    stream = tokenizer.encode(" ".join(texts[1:]), add_special_tokens=False)
    answer, rest = stream[:answer_tokens], stream[answer_tokens:]
    rows = [rest[i * length: (i + 1) * length] for i in range(batch)]
    if len(answer) < answer_tokens or len(rows[-1]) < length:
        raise ValueError(f"the reference prompts hold fewer than {answer_tokens + batch * length} tokens")
    traj = Trajectories.from_rows([prompt], ["p0"], [0] * batch, rows)

    def median_seconds(target) -> float:
        target.log_rewards(traj)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            target.log_rewards(traj)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    one_token = median_seconds(LMLikelihood(policy, tokenizer.encode(".", add_special_tokens=False)))
    with_answer = median_seconds(PromptAnswerLikelihood(policy, {"p0": answer}))
    return {"answer_tokens": answer_tokens, "batch": batch, "length": length, "repeats": repeats,
            "prompt_tokens": len(prompt), "one_token_s": one_token, "answer_s": with_answer,
            "answer_over_one_token": with_answer / one_token, "torch_threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["train", "reward"])
    parser.add_argument("what", help="train: the configuration's name; reward: the answer's length in tokens")
    parser.add_argument("--spec", required=True, help="the configuration as JSON")
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=0)
    args = parser.parse_args()
    spec = json.loads(args.spec)
    if args.kind == "train":
        result = measure_training(args.what, spec, args.steps, args.prompts)
    else:
        result = measure_reward(int(args.what), spec, args.prompts, args.repeats)
    if result is not None:  # rank 0 of several processes, or the only one
        print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
