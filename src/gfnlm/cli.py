"""Command line: gfnlm train | baseline | prior | sample | eval | compare.

  gfnlm train rng --config configs/rng-cpu.yaml [--resume] [--key value ...] [--task.key value ...]
  gfnlm baseline sft|grpo arithmetic --config configs/arithmetic-cpu.yaml [--output_dir DIR] [--init_adapter DIR]
      [--sft.key value ...] [--grpo.key value ...] [--key value ...] [--task.key value ...]
  gfnlm prior infilling --out priors/infilling [--config PRESET] [--epochs 2] [--prior-lr 5e-4] [--batch-size 8]
  gfnlm sample --run runs/rng [--n 20] [--temperature 1.0] [--base] [--correct is|smc]
  gfnlm eval rng --run runs/rng [--task.eval_key value ...]
  gfnlm compare runs/continuation-T0.8 runs/continuation-T0.9 --out runs/compare

`gfnlm train TASK --help` (and eval, baseline) lists every option with its help and default.
Every command also runs under ``torchrun --nproc_per_node N -m gfnlm.cli ...`` or ``accelerate launch``:
train splits the batches (DDP), sample and the rng evaluation split the samples; rank 0 writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gfnlm.core.config import TrainConfig, options_help, parse_overrides
from gfnlm.infra.errors import GfnlmError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gfnlm", description="GFlowNet fine-tuning for amortized inference in LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    # train, eval and baseline print their own --help: the options of the task named before it
    p_train = sub.add_parser("train", help="train a policy", add_help=False,
                             usage="gfnlm train TASK [--config PRESET] [--resume] [--KEY VALUE ...] "
                                   "[--task.KEY VALUE ...]")
    p_train.add_argument("task", nargs="?", help="task name (listed below)")
    p_train.add_argument("--config", metavar="PRESET", help="YAML preset, e.g. configs/rng-cpu.yaml")
    p_train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p_train.add_argument("-h", "--help", action="store_true", help="show the options (a task's too with TASK)")
    p_baseline = sub.add_parser(
        "baseline", help="train a baseline adapter (sft, grpo) into a run folder and evaluate it", add_help=False,
        usage="gfnlm baseline sft|grpo TASK [--config PRESET] [--output_dir DIR] [--init_adapter ADAPTER]\n"
              "       [--sft.KEY VALUE ...] [--grpo.KEY VALUE ...] [--KEY VALUE ...] [--task.KEY VALUE ...]",
        description="sft: supervised fine-tuning on the task's gold examples (TRL SFTTrainer). grpo: TRL's "
                    "GRPOTrainer on the task's reward, rollouts from gfnlm's sampler with the task's tools; start it "
                    "from an SFT run with --init_adapter DIR. The run folder (default: the preset's output_dir + "
                    "'-sft' / '-grpo') holds config.yaml and adapter/ as a GFlowNet run does, for gfnlm sample and "
                    "gfnlm eval; the model and LoRA options are the run's (--KEY), seed and progress too.")
    p_baseline.add_argument("method", nargs="?", help="sft | grpo")
    p_baseline.add_argument("task", nargs="?", help="task name (listed below)")
    p_baseline.add_argument("--config", metavar="PRESET", help="YAML preset (model, dtype, LoRA and task options)")
    p_baseline.add_argument("-h", "--help", action="store_true", help="show the options (a task's too with TASK)")
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
                                         "--task.eval_size may be changed)", add_help=False,
                            usage="gfnlm eval TASK --run DIR [--progress false] [--device DEVICE] "
                                  "[--task.eval_KEY VALUE ...]")
    p_eval.add_argument("task", nargs="?", help="task name (listed below)")
    p_eval.add_argument("--run", metavar="DIR", help="run folder")
    p_eval.add_argument("-h", "--help", action="store_true", help="show the options (a task's too with TASK)")

    p_compare = sub.add_parser("compare", help="merge the evaluation tables of several runs into one table and plot")
    p_compare.add_argument("runs", nargs="+", help="evaluated run folders")
    p_compare.add_argument("--out", required=True, help="folder for compare.csv / compare.md / compare_frontier.png")

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `torchrun -m gfnlm.cli -- sample --run ...` keeps --run/--n away from torchrun
        argv = argv[1:]
    args, rest = parser.parse_known_args(argv)
    status = _dispatch(args, rest, sub.choices[args.command])
    from gfnlm.infra.distributed import current, leave

    if current().distributed:  # one of the processes a launcher started, not a process that only says so
        leave(status)
    return status


def _dispatch(args, rest: list[str], command_parser: argparse.ArgumentParser) -> int:
    try:
        if getattr(args, "help", False):
            print(_help(args, command_parser))
            return 0
        if args.command == "baseline" and args.method is None:
            raise GfnlmError("gfnlm baseline needs a method: sft or grpo (gfnlm baseline --help).")
        if args.command in ("train", "eval", "baseline") and args.task is None:
            from gfnlm.tasks import task_names

            raise GfnlmError(f"gfnlm {args.command} needs a task: one of {', '.join(task_names())} "
                             f"(gfnlm {args.command} --help lists the options).")
        if args.command == "train":
            return _train(args, rest)
        if args.command == "baseline":
            return _baseline(args, rest)
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


def _help(args, command_parser: argparse.ArgumentParser) -> str:
    """The command's usage, then its options by heading: the baseline's settings, the trainer's, the task's."""
    from gfnlm.runs import BASELINES, EVALUATION_TRAINER_OPTIONS, RUN_SETTINGS, baseline
    from gfnlm.tasks import task_class, task_names

    parts = [command_parser.format_help().rstrip()]
    if args.command == "baseline":
        if args.method is None:
            return "\n\n".join(parts + [f"Each baseline's options: gfnlm baseline {'|'.join(BASELINES)} TASK --help"])
        settings_class, _ = baseline(args.method)
        parts.append(f"{args.method} options (--{args.method}.KEY VALUE; {' and '.join(RUN_SETTINGS)} are the "
                     f"run's):\n{options_help(settings_class, f'{args.method}.', skip=RUN_SETTINGS)}")
    yaml_file = "the run's config.yaml" if args.command == "eval" else "the --config preset"
    used = "; a baseline reads the model, LoRA, device, seed and run ones" if args.command == "baseline" else ""
    parts.append(f"trainer options (--KEY VALUE, or KEY: VALUE in {yaml_file}{used}):\n"
                 + options_help(TrainConfig, skip=("task",)))
    if args.task is None:
        parts.append(f"Each task's options: gfnlm {args.command} TASK --help, with TASK one of {', '.join(task_names())}.")
    else:
        config_class = task_class(args.task).Config
        parts.append(f"{args.task} options (--task.KEY VALUE, or --KEY VALUE where no trainer option is named KEY; "
                     f"in {yaml_file} under task:):\n{options_help(config_class, 'task.')}")
    if args.command == "eval":
        changeable = [*EVALUATION_TRAINER_OPTIONS, "task.eval_*"]
        parts.append(f"gfnlm eval reads the run's config.yaml; it may change only {', '.join(changeable)}.")
    return "\n\n".join(parts)


def _train(args, rest: list[str]) -> int:
    from gfnlm.runs import resolve, train

    spec = resolve(args.task, args.config, parse_overrides(rest))
    train(spec, resume=args.resume)
    return 0


def _baseline(args, rest: list[str]) -> int:
    from gfnlm.runs import resolve_baseline, train_baseline

    spec, settings = resolve_baseline(args.method, args.task, args.config, parse_overrides(rest))
    train_baseline(spec, args.method, settings)
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

    if not args.run:
        raise GfnlmError("gfnlm eval needs the run folder: --run DIR.")
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
