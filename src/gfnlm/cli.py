"""Command line: gfnlm train | sample | eval.

  gfnlm train rng --config configs/rng-cpu.yaml [--resume] [--key value ...] [--task.key value ...]
  gfnlm sample --run runs/rng [--n 20] [--temperature 1.0] [--base]
  gfnlm eval rng --run runs/rng
  gfnlm compare runs/continuation-T0.8 runs/continuation-T0.9 --out runs/compare

Every command also runs under ``torchrun --nproc_per_node N -m gfnlm.cli ...`` or ``accelerate launch``:
train splits the batches (DDP), sample and the rng evaluation split the samples; rank 0 writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from gfnlm.core.config import TrainConfig, parse_overrides
from gfnlm.infra.errors import GfnlmError


def _train_help() -> str:
    lines = ["options (also YAML keys; task options as --task.KEY):"]
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else "{}"
        lines.append(f"  --{f.name:<28} {f.metadata.get('help', '')} (default: {default})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gfnlm", description="GFlowNet fine-tuning for amortized inference in LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a policy", epilog=_train_help(),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p_train.add_argument("task", help="task name: rng, continuation, arithmetic, subjectivity, classify, infilling")
    p_train.add_argument("--config", help="YAML preset, e.g. configs/rng-cpu.yaml")
    p_train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p_prior = sub.add_parser("prior", help="fine-tune the base model on a task's training texts and save it as a "
                             "prior p_LM for later runs (--model DIR)")
    p_prior.add_argument("task", help="task name (infilling)")
    p_prior.add_argument("--out", required=True, help="folder for the fine-tuned model")
    p_prior.add_argument("--config", help="YAML preset (model, dtype, LoRA and task options)")
    p_prior.add_argument("--epochs", type=float, default=2.0)
    p_prior.add_argument("--prior-lr", type=float, default=5e-4)
    p_prior.add_argument("--batch-size", type=int, default=8)
    p_sample = sub.add_parser("sample", help="sample from a trained policy")
    p_sample.add_argument("--run", required=True, help="run folder")
    p_sample.add_argument("--n", type=int, default=10)
    p_sample.add_argument("--temperature", type=float, default=1.0, help="token-level sampling temperature")
    p_sample.add_argument("--target-temperature", type=float,
                          help="for a temperature-conditional run: the reward temperature T to sample for")
    p_sample.add_argument("--prompt", help="prompt text (default: the task's first training prompt)")
    p_sample.add_argument("--base", action="store_true", help="sample the base model instead (adapter off)")
    p_sample.add_argument("--seed", type=int, default=0)
    p_sample.add_argument("--correct", choices=["is", "smc"],
                          help="correct the proposal towards the exact target: importance sampling or SMC")
    p_sample.add_argument("--particles", type=int, default=16, help="particles per output with --correct")
    p_sample.add_argument("--ess-threshold", type=float, default=0.5, help="SMC resamples when ESS/N falls below")
    p_eval = sub.add_parser("eval", help="evaluate a trained policy (again: evaluation options such as "
                                         "--task.eval_size may be changed)")
    p_eval.add_argument("task")
    p_eval.add_argument("--run", required=True, help="run folder")

    p_compare = sub.add_parser("compare", help="merge the evaluation tables of several runs into one table and plot")
    p_compare.add_argument("runs", nargs="+", help="evaluated run folders")
    p_compare.add_argument("--out", required=True, help="folder for compare.csv / compare.md / compare_frontier.png")

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `torchrun -m gfnlm.cli -- sample --run ...` keeps --run/--n away from torchrun
        argv = argv[1:]
    args, rest = parser.parse_known_args(argv)
    status = _dispatch(args, rest)
    from gfnlm.infra.distributed import current, leave

    if current().distributed:  # one of the processes a launcher started, not a process that only says so
        leave(status)
    return status


def _dispatch(args, rest: list[str]) -> int:
    try:
        if args.command == "train":
            return _train(args, rest)
        if args.command == "prior":
            return _prior(args, rest)
        if args.command == "eval":
            return _eval(args, rest)
        if rest:
            raise GfnlmError(f"Unexpected arguments {' '.join(rest)}.")
        if args.command == "sample":
            return _sample(args)
        return _compare(args)
    except GfnlmError as exc:
        print(f"gfnlm: error: {exc}", file=sys.stderr)
        return 2


def _train(args, rest: list[str]) -> int:
    from gfnlm.runs import resolve, train

    spec = resolve(args.task, args.config, parse_overrides(rest))
    train(spec, resume=args.resume)
    return 0


def _prior(args, rest: list[str]) -> int:
    from gfnlm.baselines.sft import SupervisedSettings
    from gfnlm.core.config import check_range
    from gfnlm.runs import prepare_model, resolve
    from gfnlm.tasks.infilling.prior import check_prior, finetune_prior

    check_range("--epochs", args.epochs, low=0, low_open=True)
    check_range("--prior-lr", args.prior_lr, low=0, low_open=True)
    check_range("--batch-size", args.batch_size, low=1)
    spec = resolve(args.task, args.config, parse_overrides(rest))
    check_prior(spec, args.out)
    finetune_prior(spec, prepare_model(spec), args.out, SupervisedSettings(epochs=args.epochs, lr=args.prior_lr, batch_size=args.batch_size,
                                                      seed=spec.config.seed, progress=spec.config.progress))
    return 0


def _sample(args) -> int:
    import contextlib

    from gfnlm.inference.sampling import sample_completions
    from gfnlm.infra.distributed import gather_flat, process_generator, share, start
    from gfnlm.runs import load_run, load_trained_policy

    if args.n < 1 or args.temperature <= 0:
        raise GfnlmError("--n must be at least 1 and --temperature positive.")
    if args.correct and (args.particles < 1 or args.temperature != 1.0 or not 0 <= args.ess_threshold <= 1):
        raise GfnlmError("With --correct: --particles at least 1, --ess-threshold in [0, 1], and no --temperature "
                         "(the target's temperature is the run's reward_temp_end, or --target-temperature).")
    spec = load_run(args.run)
    conditioning = _conditioning(args, spec)
    processes = start(spec.config.device)
    policy = load_trained_policy(spec, Path(args.run), processes)
    tokenizer = policy.tokenizer
    prompt = spec.task.train_prompts()[0].ids
    if args.prompt is not None:
        if not args.prompt.strip():
            raise GfnlmError("--prompt is empty.")
        prompt = tuple(tokenizer.encode(args.prompt, add_special_tokens=False))
    space = spec.task.action_space().to(policy.device)
    # Several processes each draw their share of the n outputs from their own seed; rank 0 prints all.
    generator = process_generator(args.seed, policy.device, processes)
    n = share(args.n, processes)
    # A conditional policy reads T through its embedding; the target and the base model never see it.
    reading = (conditioning.at(policy, args.target_temperature) if conditioning is not None
               else contextlib.nullcontext())
    with reading:
        if args.correct:
            temperature = args.target_temperature if conditioning is not None else spec.config.reward_temp_end
            return _sample_corrected(args, spec, policy, space, prompt, temperature, generator, n, processes)
        with policy.base() if args.base else contextlib.nullcontext(policy.model) as model:
            rows = sample_completions(model, space, prompt, n, temperature=args.temperature, generator=generator)
    rows = gather_flat(rows, processes)
    if processes.is_main:
        for row in rows:
            print(repr(tokenizer.decode(row)))
    processes.close()
    return 0


def _conditioning(args, spec):
    """The conditioning of a temperature-conditional run (None otherwise), checked before any loading."""
    from gfnlm.model.temperature import TemperatureConditioning

    conditional = spec.config.conditional_temperatures
    if args.target_temperature is not None and not conditional:
        raise GfnlmError("--target-temperature needs a run trained with conditional_temperatures.")
    if not conditional or (args.base and not args.correct):  # plain base-model samples need no T
        return None
    conditioning = TemperatureConditioning(conditional)
    if args.target_temperature is None:
        raise GfnlmError(f"This policy is temperature-conditional ({conditional}); give --target-temperature.")
    if not conditioning.covers(args.target_temperature):
        raise GfnlmError(f"--target-temperature {args.target_temperature:g} is outside the trained temperatures "
                         f"{conditioning.describe()}.")
    return conditioning


def _sample_corrected(args, spec, policy, space, prompt, temperature, generator, n, processes) -> int:
    """Each output is one draw from an independent IS / SMC run of --particles particles, for the target
    p_LM(Z | X)^(1/temperature); the proposal is the policy, or the base model."""
    import contextlib
    import math

    import torch

    from gfnlm.inference.correction import importance_sample, smc

    target = spec.task.target(policy)
    mine = ([], [], [], [], 0)  # a process with no share of the n outputs (n < processes)
    if n:
        with policy.base() if args.base else contextlib.nullcontext(policy.model) as model:
            if args.correct == "is":
                out = importance_sample(model, space, target, prompt, n, args.particles, temperature, generator)
            else:
                out = smc(model, space, target, prompt, n, args.particles, temperature, generator,
                          args.ess_threshold)
        mine = (out.completions, out.log_z.tolist(), out.ess.tolist(), out.resamplings.tolist(), out.generated_tokens)
    parts = processes.gather(mine)
    completions = [row for part in parts for row in part[0]]
    log_zs, ess, resamplings = (torch.tensor([v for part in parts for v in part[i]], dtype=torch.float64)
                                for i in (1, 2, 3))
    tokens = sum(part[4] for part in parts)
    if processes.is_main:
        for row in completions:
            print(repr(policy.tokenizer.decode(row)))
        log_z = float(torch.logsumexp(log_zs, 0)) - math.log(len(log_zs))
        print(f"# {args.correct} with {args.particles} particles per output, proposal "
              f"{'base model' if args.base else 'policy'}, target T = {temperature:g}: log Z(X) estimate "
              f"{log_z:.3f}, mean ESS/N {float(ess.mean()):.3f}, mean resamplings {float(resamplings.mean()):.2f}, "
              f"{tokens} tokens generated")
    processes.close()
    return 0


def _eval(args, rest: list[str]) -> int:
    from gfnlm.infra.distributed import start
    from gfnlm.runs import load_run, load_trained_policy, report

    spec = load_run(args.run, parse_overrides(rest))
    if spec.task_name != args.task:
        raise GfnlmError(f"{args.run} is a {spec.task_name!r} run, not {args.task!r}.")
    spec.config.evaluate = True
    processes = start(spec.config.device)
    policy = load_trained_policy(spec, Path(args.run), processes)
    report(spec, policy, Path(args.run), processes=processes)
    processes.close()
    return 0


def _compare(args) -> int:
    from gfnlm.evaluation.comparison import compare_runs
    from gfnlm.runs import load_run

    table, plot = compare_runs([(Path(r), load_run(r)) for r in args.runs], Path(args.out))
    print(table)
    print(f"\nTable: {(Path(args.out) / 'compare.md').resolve()}\nPlot:  {plot.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
