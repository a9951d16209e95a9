"""Run folders: resolve and validate a configuration, then train, evaluate, sample and report.

Everything a user can get wrong is checked here before the model is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from gfnlm.baselines.grpo import GrpoSettings, train_grpo
from gfnlm.baselines.sft import SupervisedSettings, supervised_finetune
from gfnlm.core.config import TrainConfig, build, merge, read_yaml, to_dict
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.loading import resolve_model_source
from gfnlm.tasks import Task, task_class

CONFIG_FILE = "config.yaml"
BASELINE_FILE = "baseline.json"  # in a baseline's run folder: its method, settings and training statistics
# gfnlm baseline METHOD: the settings it reads from --METHOD.KEY, and the Task method that gives its data
BASELINES = {"sft": (SupervisedSettings, "supervised_examples"), "grpo": (GrpoSettings, "task_reward")}
RUN_SETTINGS = ("seed", "progress")  # baseline settings that the run's own options give


@dataclass
class RunSpec:
    task_name: str
    config: TrainConfig
    task: Task


def resolve(task_name: str, config_file: str | None, overrides: dict, functions: dict | None = None) -> RunSpec:
    """Merge the YAML file and overrides, validate every value and the inputs (cheap checks only).
    ``functions``: reward functions given from Python, by the names the config's function terms use."""
    values = read_yaml(config_file) if config_file else {}
    file_task = values.pop("task_name", None)
    if file_task is not None and file_task != task_name:
        raise GfnlmError(f"The config file is for task {file_task!r}, not {task_name!r}.")
    cls = task_class(task_name)
    config = build(TrainConfig, merge(values, task_options_to_section(overrides, cls.Config)), where="config")
    section = dict(config.task)
    if "base_dir" in {f.name for f in dataclasses.fields(cls.Config)} and not section.get("base_dir"):
        # the config's relative paths are read from its own folder; saved absolute, so the run folder keeps them
        section["base_dir"] = str(Path(config_file).resolve().parent if config_file else Path.cwd())
    try:
        task_config = build(cls.Config, section, where=f"task section of the {task_name} config")
        config.task = to_dict(task_config)
        resolve_model_source(config.model)
        task = cls(task_config)
        task.source = str(config_file or "")
        if functions:
            task.functions = dict(functions)
        task.check_inputs()
    except GfnlmError as exc:
        raise GfnlmError(f"{config_file}: {exc}" if config_file else str(exc)) from None
    return RunSpec(task_name, config, task)


def task_options_to_section(overrides: dict, task_config: type) -> dict:
    """``--data x`` means ``--task.data x`` when ``data`` is a task option and not a trainer option."""
    trainer = {f.name for f in dataclasses.fields(TrainConfig)}
    task = {f.name for f in dataclasses.fields(task_config)} - trainer
    moved = {k: v for k, v in overrides.items() if k in task}
    if not moved:
        return overrides
    section = overrides.get("task", {})
    if not isinstance(section, dict):
        raise GfnlmError("Option --task is a section; set its keys as --task.KEY value.")
    both = sorted(set(moved) & set(section))
    if both:
        raise GfnlmError(f"Option --{both[0]} is given both as --{both[0]} and as --task.{both[0]}; give it once.")
    return {**{k: v for k, v in overrides.items() if k not in moved}, "task": {**section, **moved}}


EVALUATION_TRAINER_OPTIONS = ("progress", "device")  # trainer options that `gfnlm eval` may change


def load_run(run_dir: str | Path, evaluation_overrides: dict | None = None, functions: dict | None = None) -> RunSpec:
    """The run's saved config; ``evaluation_overrides`` may change how it is evaluated (progress, device, a
    task's eval_* options), never how it was trained; ``functions``: reward functions given from Python."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise GfnlmError(f"{run_dir} is not a gfnlm run folder (no {CONFIG_FILE}); pass the folder a training run wrote.")
    values = read_yaml(path)
    task_name = values.pop("task_name", None)
    if task_name is None:
        raise GfnlmError(f"{path} names no task_name.")
    if evaluation_overrides:
        values = merge(values, check_evaluation_overrides(task_name, evaluation_overrides))
    return resolve(task_name, None, values, functions)


def check_evaluation_overrides(task_name: str, overrides: dict) -> dict:
    """The overrides (task options moved into their section), or a clear error for any option that would
    change the trained run rather than its evaluation."""
    cls = task_class(task_name)
    overrides = task_options_to_section(overrides, cls.Config)
    section = overrides.get("task", {})
    trained = sorted(k for k in overrides if k not in ("task",) + EVALUATION_TRAINER_OPTIONS)
    trained += sorted(f"task.{k}" for k in section if not k.startswith("eval_"))
    if trained:
        allowed = ", ".join([*EVALUATION_TRAINER_OPTIONS, "task.eval_*"])
        raise GfnlmError(f"gfnlm eval can change how a run is evaluated ({allowed}), not how it was trained: "
                         f"{', '.join('--' + k for k in trained)}.")
    return overrides


def prepare_model(spec: RunSpec, processes=None):
    """Load the base model on this process's device, wrap it as a LoRA policy, and let the task
    tokenize its inputs."""

    from gfnlm.core.config import adapter_file
    from gfnlm.infra.device import resolve_device
    from gfnlm.infra.seeding import seed_globally
    from gfnlm.model.grad_checkpointing import enable_gradient_checkpointing
    from gfnlm.model.loading import load_base_model
    from gfnlm.model.policy import LoraSettings, Policy
    from gfnlm.model.temperature import parse_temperatures

    c = spec.config
    seed_globally(c.seed)
    device = processes.device if processes is not None else resolve_device(c.device)
    model, tokenizer = load_base_model(c.model, dtype=c.dtype, device=device, load_in_4bit=c.load_in_4bit)
    policy = Policy(model, tokenizer, LoraSettings(c.lora_r, c.lora_alpha, c.lora_targets), seed=c.seed)
    spec.task.setup(tokenizer, policy.vocab_size)  # first: the stop offset needs the task's terminator
    if c.conditional_temperatures:
        temperatures = parse_temperatures(c.conditional_temperatures)[1]
        policy.add_temperature_embedding(min(temperatures), max(temperatures), spec.task.action_space().terminator[0])
    if c.init_adapter:
        policy.load_adapter(adapter_file(c.init_adapter))
    if c.gradient_checkpointing:
        enable_gradient_checkpointing(policy.model)
    check_context_window(spec.task, model.config)
    return policy


def check_context_window(task: Task, model_config) -> None:
    """Prompt + completion + terminator must fit the model's positions (clear error, not an index crash)."""
    limit = getattr(model_config, "max_position_embeddings", None)
    prompts = task.all_prompts()
    if not limit or not prompts:
        return
    space = task.action_space()
    longest = max(prompts, key=lambda p: len(p.ids))
    need = len(longest.ids) + space.max_len + space.terminator_length
    if need > limit:
        raise GfnlmError(f"Prompt {longest.text[:40]!r}... has {len(longest.ids)} tokens; with up to {space.max_len} "
                         f"generated tokens it needs {need} positions, but the model's context window is {limit}. "
                         "Shorten the prompt or lower task.max_len.")


def train(spec: RunSpec, resume: bool = False) -> Path:
    """Train and report. Under a launcher every process runs this; only rank 0 writes to the run folder."""
    from gfnlm.core.trainer import Trainer
    from gfnlm.infra.checkpoint import CheckpointStore
    from gfnlm.infra.distributed import start

    c = spec.config
    run_dir = Path(c.output_dir)
    if not resume and CheckpointStore(run_dir).list():
        raise GfnlmError(f"{run_dir} already holds a training run; continue it with --resume or choose another "
                         "--output_dir.")
    if (run_dir / BASELINE_FILE).exists():
        raise GfnlmError(f"{run_dir} holds a baseline run; choose another --output_dir.")
    processes = start(c.device)
    with _run_lock(run_dir, processes):
        started = time.perf_counter()
        if processes.is_main:
            (run_dir / CONFIG_FILE).write_text(config_text(spec))
        policy = prepare_model(spec, processes)
        trainer = Trainer(c, spec.task, policy, run_dir, processes)
        spec.task.fit(trainer, resume=resume)
        if processes.is_main:
            policy.save_peft_folder(run_dir / "adapter")
        train_seconds = time.perf_counter() - started
        report(spec, policy, run_dir, train_seconds, processes)
    processes.close()
    return run_dir


@contextmanager
def _run_lock(run_dir: Path, processes):
    """Rank 0 holds the run folder's lock while the block runs; every process learns when it is taken."""
    from gfnlm.infra.checkpoint import RunLock

    lock = RunLock(run_dir)
    if processes.is_main:
        try:
            lock.acquire()
        except GfnlmError as exc:
            processes.agree(str(exc))
    processes.agree(None)
    try:
        yield
    finally:
        if processes.is_main:
            lock.release()


def resolve_baseline(method: str, task_name: str, config_file: str | None, overrides: dict):
    """The run spec and the baseline's settings (``--METHOD.KEY value``; seed and progress are the run's),
    every value and the task's data for it checked before any model is loaded. Without --output_dir the
    run folder is the preset's output_dir + "-METHOD"."""
    from gfnlm.infra.checkpoint import CheckpointStore

    settings_class, data = baseline(method)
    sections = {m: overrides[m] for m in BASELINES if m in overrides}
    if set(sections) - {method}:
        other = sorted(set(sections) - {method})[0]
        raise GfnlmError(f"--{other}.KEY options are for gfnlm baseline {other}, not {method}.")
    values = sections.get(method, {})
    if not isinstance(values, dict):
        raise GfnlmError(f"Option --{method} is a section; set its keys as --{method}.KEY value.")
    from_run = sorted(set(values) & set(RUN_SETTINGS))
    if from_run:
        raise GfnlmError(f"--{method}.{from_run[0]} is the run's own option; give --{from_run[0]} instead.")
    spec = resolve(task_name, config_file, {k: v for k, v in overrides.items() if k not in sections})
    c = spec.config
    if "output_dir" not in overrides:
        c.output_dir = f"{c.output_dir}-{method}"
    settings = build(settings_class, {**values, "seed": c.seed, "progress": c.progress}, where=f"{method} settings")
    if c.conditional_temperatures:
        raise GfnlmError("conditional_temperatures trains a GFlowNet policy for many reward temperatures; a "
                         "baseline trains a plain adapter: leave it out.")
    if not spec.task.provides(data):
        getattr(spec.task, data)()  # the default says, in one line, that the task has no such data
    for package in ("trl", "datasets"):
        if importlib.util.find_spec(package) is None:
            raise GfnlmError(f"gfnlm baseline trains through TRL and needs the {package} package: "
                             "pip install trl datasets.")
    run_dir = Path(c.output_dir)
    if CheckpointStore(run_dir).list() or (run_dir / "adapter").exists():
        raise GfnlmError(f"{run_dir} already holds a trained run; choose another --output_dir.")
    return spec, settings


def baseline(method: str) -> tuple[type, str]:
    """A baseline's settings class and the Task method that gives its data, or a clear error."""
    if method not in BASELINES:
        import difflib

        hint = difflib.get_close_matches(method, list(BASELINES), n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise GfnlmError(f"Unknown baseline {method!r}; available: {', '.join(BASELINES)}.{extra}")
    return BASELINES[method]


def train_baseline(spec: RunSpec, method: str, settings) -> Path:
    """Train the baseline's adapter (the run's model and LoRA settings, from init_adapter when given) into a
    run folder that `gfnlm sample` and `gfnlm eval` read as they read a GFlowNet run (config.yaml, adapter/,
    and BASELINE_FILE instead of checkpoints), then evaluate it and write the report."""
    from gfnlm.infra.distributed import start

    run_dir = Path(spec.config.output_dir)
    processes = start(spec.config.device)
    with _run_lock(run_dir, processes):
        started = time.perf_counter()
        if processes.is_main:
            (run_dir / CONFIG_FILE).write_text(config_text(spec))
        policy = prepare_model(spec, processes)
        training = fit_baseline(method, policy, spec.task, settings)
        if processes.is_main:
            policy.save_peft_folder(run_dir / "adapter")
            (run_dir / BASELINE_FILE).write_text(json.dumps(
                {"method": method, "settings": dataclasses.asdict(settings), "training": training}, indent=1))
        report(spec, policy, run_dir, time.perf_counter() - started, processes)
    processes.close()
    return run_dir


def fit_baseline(method: str, policy, task: Task, settings) -> dict:
    """Train the policy's active adapter by the baseline on the task's own data (its gold examples, or its
    reward with the project's sampler for rollouts); returns the training statistics."""
    if method == "sft":
        return supervised_finetune(policy, task.supervised_examples(), settings)
    reward = task.task_reward() if settings.reward == "checker" else task.target(policy)
    return {"steps": train_grpo(policy, task, reward, settings)}


def config_text(spec: RunSpec) -> str:
    """A run folder's config.yaml: every resolved option (the run can be loaded, resumed and compared)."""
    return yaml.safe_dump({"task_name": spec.task_name, **to_dict(spec.config)}, sort_keys=False)


def holds_run_of(run_dir: str | Path, spec: RunSpec) -> bool:
    """Whether the folder holds a run (finished or part-trained) of exactly this configuration."""
    path = Path(run_dir) / CONFIG_FILE
    return path.is_file() and yaml.safe_load(path.read_text()) == yaml.safe_load(config_text(spec))


def load_trained_policy(spec: RunSpec, run_dir: Path, processes=None):
    from gfnlm.infra.checkpoint import CheckpointStore

    policy = prepare_model(spec, processes)
    latest = CheckpointStore(run_dir).latest()
    if latest is not None:
        policy.load_adapter(latest / "adapter.safetensors")
    elif (run_dir / BASELINE_FILE).is_file():  # a baseline run keeps only its final adapter
        policy.load_adapter(run_dir / "adapter" / "adapter_model.safetensors")
    else:
        raise GfnlmError(f"{run_dir} has no complete checkpoint to load.")
    return policy


def report(spec: RunSpec, policy, run_dir: Path, train_seconds: float | None = None, processes=None) -> Path | None:
    """Evaluate (when configured), plot the training curves, and write report.md (rank 0). A task whose
    evaluation needs every process (``evaluates_on_every_process``) evaluates on all of them, the others
    without progress bars; otherwise rank 0 alone."""
    from gfnlm.infra.distributed import current

    processes = processes or current()
    if not processes.is_main:
        if spec.config.evaluate and spec.task.evaluates_on_every_process:
            with tempfile.TemporaryDirectory() as scratch:  # the other ranks' copies of the files are dropped
                spec.task.evaluate(policy, Path(scratch), dataclasses.replace(spec.config, progress=False))
        return None
    return _write_report(spec, policy, run_dir, train_seconds)


def _write_report(spec: RunSpec, policy, run_dir: Path, train_seconds: float | None) -> Path:
    from gfnlm.evaluation.plots import plot_training_curves

    c = spec.config
    weights = str(policy.model.get_input_embeddings().weight.dtype).removeprefix("torch.")  # what dtype auto chose
    baseline_file = run_dir / BASELINE_FILE
    lines = [f"# gfnlm run: {spec.task_name}", "",
             f"- model: `{c.model}` ({weights}), LoRA r={c.lora_r}, alpha={c.lora_alpha}, targets {c.lora_targets}"]
    if baseline_file.is_file():
        trained = json.loads(baseline_file.read_text())
        settings = ", ".join(f"{k} {v}" for k, v in trained["settings"].items() if k not in RUN_SETTINGS)
        origin = f", from the adapter {c.init_adapter}" if c.init_adapter else ""
        lines.append(f"- baseline {trained['method']} through TRL ({settings}{origin}); the evaluation's policy "
                     "rows (named gfn...) are this adapter's")
    else:
        lines += [f"- objective: {c.objective} (lambda {c.subtb_lambda}), {c.steps} steps x {c.grad_accum} "
                  f"micro-batches x {c.prompts_per_batch} prompts x {c.trajectories_per_prompt} trajectories, lr {c.lr}",
                  f"- reward temperature {c.reward_temp_start} -> {c.reward_temp_end} over {c.reward_temp_horizon} "
                  f"steps; behaviour: replay {c.replay_prob}, tempered {c.tempered_prob} (T in [{c.tempered_min}, "
                  f"{c.tempered_max}]), epsilon {c.epsilon}"]
    lines.append(f"- seed {c.seed}")
    if train_seconds is not None:
        lines.append(f"- training wall time: {train_seconds:.0f} s")
    plots = []
    curves = plot_training_curves(run_dir, spec.task.training_metric_names)
    if curves:
        plots.append(curves)
    if c.evaluate and c.conditional_temperatures and not spec.task.evaluates_conditional_runs:
        lines += ["", "## Evaluation", "", f"Temperature-conditional policy ({c.conditional_temperatures}): the "
                  f"{spec.task_name} evaluation runs one fixed temperature and is skipped; sample with `gfnlm sample "
                  "--run ... --target-temperature T`."]
    elif c.evaluate:
        started = time.perf_counter()
        result = spec.task.evaluate(policy, run_dir, c)
        lines += ["", "## Evaluation", "", result.markdown, "", f"Evaluation wall time: {time.perf_counter() - started:.0f} s"]
        plots += result.plots
    lines += ["", "## Files", ""] + [f"- {p.name}" for p in plots]
    if baseline_file.is_file():
        lines += [f"- {BASELINE_FILE}: the baseline's settings and training statistics",
                  "- adapter/: the trained LoRA adapter (peft)"]
    else:
        lines += ["- metrics.jsonl / metrics.csv: per-step training metrics",
                  "- adapter/: the trained LoRA adapter (peft)", "- checkpoints/: resumable state"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"\nReport: {path.resolve()}")
    for p in plots:
        print(f"Plot:   {Path(p).resolve()}")
    return path
