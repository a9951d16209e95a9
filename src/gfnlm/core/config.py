"""Configuration: one dataclass for the trainer, one per task; YAML files plus ``--key value`` overrides.

Everything is validated (unknown keys with a "did you mean", types, ranges) before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gfnlm.core.objectives import LOG_Z_MODES, OBJECTIVES
from gfnlm.infra.errors import GfnlmError

LR_SCHEDULES = ("constant_with_warmup", "linear", "cosine", "constant")


@dataclass
class TrainConfig:
    """Options shared by every task. Task options live under ``task:``."""

    # model and adapter
    model: str = field(default="embedded", metadata={"help": "'embedded', a Hugging Face model folder or a .gguf file"})
    dtype: str = field(default="float32", metadata={
        "help": "float32 | bfloat16 | auto (bfloat16 where the GPU or CPU computes it natively; log-softmax is "
                "always float32)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha"})
    lora_targets: list[str] | str = field(default="all-linear", metadata={"help": "module names, or all-linear"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each layer's activations in the backward pass: less memory, about 1/3 more compute"})
    load_in_4bit: bool = field(default=False, metadata={
        "help": "4-bit NF4 base weights (QLoRA; needs CUDA and bitsandbytes)"})
    init_adapter: str = field(default="", metadata={
        "help": "start the policy from this LoRA adapter (a .safetensors file, a peft adapter folder or a run "
                "folder) instead of a fresh one, e.g. after supervised fine-tuning; same lora_r and targets"})
    # objective
    objective: str = field(default="subtb", metadata={"help": "subtb (modified sub-trajectory balance) | tb | db"})
    subtb_lambda: float = field(default=1.0, metadata={"help": "weight lambda^(j-i-1) of sub-trajectory i->j"})
    # batches
    steps: int = field(default=200, metadata={"help": "optimizer steps"})
    trajectories_per_prompt: int = field(default=16, metadata={"help": "trajectories sampled per prompt"})
    prompts_per_batch: int = field(default=1, metadata={"help": "distinct prompts per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step (per process)"})
    virtual_ranks: int = field(default=1, metadata={
        "help": "sampling streams per process, each with its own seed and replay buffer; one process with N "
                "and N x grad_accum reproduces N processes"})
    # optimization
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the LoRA parameters"})
    logz_lr: float = field(default=0.1, metadata={"help": "learning rate of the learned log Z(X)"})
    log_z: str = field(default="learned", metadata={
        "help": "log Z(X) at a root that cannot stop (min_len > 0) or for tb: learned (a table trained with "
                "logz_lr) | batch (the value that minimizes the loss given the batch's trajectories of X)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=20, metadata={"help": "linear learning-rate warm-up steps"})
    lr_schedule: str = field(default="constant_with_warmup", metadata={"help": "|".join(LR_SCHEDULES)})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 disables)"})
    # reward
    reward_temp_start: float = field(default=1.0, metadata={"help": "reward temperature at step 0"})
    reward_temp_end: float = field(default=1.0, metadata={"help": "reward temperature after the horizon"})
    conditional_temperatures: str = field(default="", metadata={
        "help": "train one policy for many reward temperatures: 'lo:hi' (a range) or 'a,b' (values); each "
                "micro-batch draws T and the policy reads it as a learned embedding, with learned factors on its "
                "logits, its stop token's logit and its LoRA output (replaces the reward_temp schedule; needs "
                "log_z: batch)"})
    reward_temp_horizon: int = field(default=0, metadata={"help": "steps of the linear temperature schedule"})
    log_reward_floor: float = field(default=-500.0, metadata={"help": "log-rewards are clamped to at least this"})
    # behaviour policy
    replay_prob: float = field(default=0.25, metadata={"help": "probability a micro-batch replays the buffer"})
    tempered_prob: float = field(default=0.5, metadata={"help": "probability of sampling at a random temperature"})
    tempered_min: float = field(default=0.5, metadata={"help": "lowest random sampling temperature"})
    tempered_max: float = field(default=2.0, metadata={"help": "highest random sampling temperature"})
    epsilon: float = field(default=0.0, metadata={"help": "epsilon-uniform exploration when sampling"})
    # replay buffer
    buffer_capacity: int = field(default=50, metadata={"help": "trajectories kept per prompt (top-k by reward)"})
    buffer_tolerance: float = field(default=0.25, metadata={"help": "near-duplicate edit-distance tolerance"})
    buffer_sampling: str = field(default="uniform", metadata={"help": "uniform | prioritized"})
    buffer_priority_temperature: float = field(default=1.0, metadata={"help": "prioritized: p ~ exp(logR / this)"})
    # run
    seed: int = field(default=0, metadata={"help": "seed of every random stream"})
    output_dir: str = field(default="runs/run", metadata={"help": "run folder"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    max_bad_steps: int = field(default=10, metadata={"help": "stop after this many consecutive non-finite steps"})
    tensorboard: bool = field(default=False, metadata={"help": "also write TensorBoard events"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    evaluate: bool = field(default=True, metadata={"help": "evaluate (and plot) when training ends"})
    task: dict = field(default_factory=dict, metadata={"help": "task options"})

    def validate(self) -> None:
        check_choice("dtype", self.dtype, ("float32", "bfloat16", "auto"))
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("log_z", self.log_z, LOG_Z_MODES)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("buffer_sampling", self.buffer_sampling, ("uniform", "prioritized"))
        for name in ("lora_r", "steps", "trajectories_per_prompt", "prompts_per_batch", "grad_accum",
                     "checkpoint_every", "keep_checkpoints", "buffer_capacity", "max_bad_steps", "virtual_ranks"):
            check_range(name, getattr(self, name), low=1)
        for name in ("lr", "lora_alpha", "reward_temp_start", "reward_temp_end",
                     "tempered_min", "tempered_max", "buffer_priority_temperature"):
            check_range(name, getattr(self, name), low=0, low_open=True)
        for name in ("replay_prob", "tempered_prob", "epsilon", "buffer_tolerance"):
            check_range(name, getattr(self, name), low=0, high=1)
        for name in ("logz_lr", "weight_decay", "warmup_steps", "max_grad_norm", "reward_temp_horizon"):
            check_range(name, getattr(self, name), low=0)
        check_range("subtb_lambda", self.subtb_lambda, low=0, low_open=True)
        if self.replay_prob + self.tempered_prob > 1:
            raise GfnlmError("replay_prob + tempered_prob must be at most 1 (the rest is on-policy sampling).")
        if self.grad_accum % self.virtual_ranks:
            raise GfnlmError(f"grad_accum ({self.grad_accum}) must be a multiple of virtual_ranks "
                             f"({self.virtual_ranks}): each stream draws grad_accum / virtual_ranks micro-batches.")
        if self.load_in_4bit:
            check_4bit_support(self.device)
        if self.init_adapter:
            adapter_file(self.init_adapter)
        if self.conditional_temperatures:
            from gfnlm.model.temperature import parse_temperatures

            parse_temperatures(self.conditional_temperatures)
            if self.log_z != "batch":
                raise GfnlmError("conditional_temperatures needs log_z: batch (a learned log Z(X) cannot depend on T).")
        if self.tempered_min > self.tempered_max:
            raise GfnlmError("tempered_min must not exceed tempered_max.")
        if self.log_reward_floor >= 0:
            raise GfnlmError("log_reward_floor must be negative (it is the log-reward of impossible outputs).")
        if self.tensorboard:
            try:
                import tensorboard  # noqa: F401
            except ImportError as exc:
                raise GfnlmError("tensorboard: true needs the tensorboard package; run "
                                 "`pip install tensorboard` or set tensorboard: false.") from exc


def adapter_file(path: str) -> Path:
    """The weights file of an adapter given as a file, a peft folder or a run folder."""
    given = Path(path)
    for candidate in (given, given / "adapter_model.safetensors", given / "adapter" / "adapter_model.safetensors"):
        if candidate.is_file():
            return candidate
    raise GfnlmError(f"init_adapter {path!r}: no adapter there (a .safetensors file, a folder with "
                     "adapter_model.safetensors, or a run folder).")


def check_4bit_support(device: str) -> None:
    """4-bit weights need bitsandbytes and a CUDA device; say so before any model is loaded."""
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise GfnlmError("load_in_4bit needs the bitsandbytes package (`pip install bitsandbytes`, CUDA only); "
                         "or set load_in_4bit: false.")
    if not torch.cuda.is_available() or device in ("cpu", "mps"):
        raise GfnlmError("load_in_4bit needs a CUDA GPU; on this machine set load_in_4bit: false "
                         "(dtype: bfloat16 halves the memory instead).")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise GfnlmError(f"{name} must be one of {', '.join(map(str, choices))} (got {value!r}).{extra}")


def method_list(name: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma-separated list of method names, each one of ``allowed`` (at least one)."""
    methods = [m.strip() for m in value.split(",") if m.strip()]
    if not methods or any(m not in allowed for m in methods):
        raise GfnlmError(f"{name} {value!r}: choose from {', '.join(allowed)}.")
    return methods


class EvaluationMethods:
    """Base of the task configs with an ``eval_methods`` option: ``METHODS`` names the methods it may list."""

    METHODS: typing.ClassVar[tuple[str, ...]] = ()
    eval_methods: str

    def methods(self) -> list[str]:
        return method_list("task.eval_methods", self.eval_methods, self.METHODS)


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    if low is not None and (value < low or (low_open and value == low)):
        raise GfnlmError(f"{name} must be {'>' if low_open else '>='} {low} (got {value}).")
    if high is not None and value > high:
        raise GfnlmError(f"{name} must be <= {high} (got {value}).")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML or command-line value to the annotated type, or fail with a clear message."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        if type(value) in options:  # already one of the allowed types: keep it as it is
            return _coerce(name, value, type(value))
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(name, value, option)
            except GfnlmError as exc:
                errors.append(str(exc))
        raise GfnlmError(errors[0] if errors else f"{name}: invalid value {value!r}.")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise GfnlmError(f"{name} must be true or false (got {value!r}).")
    if annotation is int:
        if isinstance(value, bool):
            raise GfnlmError(f"{name} must be an integer (got {value!r}).")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise GfnlmError(f"{name} must be an integer (got {value!r}).")
    if annotation is float:
        if isinstance(value, bool):
            raise GfnlmError(f"{name} must be a number (got {value!r}).")
        number = None
        if isinstance(value, (int, float, str)):
            try:
                number = float(value)
            except ValueError:
                pass
            except OverflowError:  # an integer beyond the float range
                number = math.inf
        if number is None:
            raise GfnlmError(f"{name} must be a number (got {value!r}).")
        if not math.isfinite(number):
            raise GfnlmError(f"{name} must be a finite number (got {value!r}).")
        return number
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise GfnlmError(f"{name} must be a string (got {value!r}).")
    if origin is list:
        (item_type,) = typing.get_args(annotation) or (str,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise GfnlmError(f"{name} must be a list (got {value!r}).")
        return [_coerce(f"{name}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise GfnlmError(f"{name} must be a mapping (got {value!r}).")
        return value
    return value


def build(cls, values: dict, where: str = "config"):
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise GfnlmError(f"The {where} must be a mapping of keys to values.")
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            hint = difflib.get_close_matches(str(key), list(known), n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else f" Known keys: {', '.join(known)}."
            raise GfnlmError(f"Unknown key {key!r} in the {where}.{extra}")
        kwargs[key] = _coerce(key, value, hints[key])
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def options_help(cls, prefix: str = "", skip: tuple[str, ...] = ()) -> str:
    """The options of config dataclass ``cls`` for a --help page: ``--PREFIXNAME``, its help and its default."""
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    column = max(len(prefix + f.name) for f in fields) + 6
    lines = []
    for f in fields:
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        text = f"{f.metadata.get('help', '')} (default: {shown_default(default)})"
        lines += textwrap.wrap(text, 118, initial_indent=f"  --{prefix}{f.name}".ljust(column),
                               subsequent_indent=" " * column, break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def shown_default(value: Any) -> str:
    """A default as one would write it: true / false, a string quoted (so '' and '\\n' show)."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GfnlmError(f"Config file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise GfnlmError(f"Config file {str(path)!r} is not UTF-8 text (byte {exc.start}).") from exc
    except RecursionError as exc:
        raise GfnlmError(f"Config file {str(path)!r} is nested too deeply to be a config.") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise GfnlmError(f"Config file {str(path)!r} is not valid YAML{line}: {getattr(exc, 'problem', exc)}.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GfnlmError(f"Config file {str(path)!r} must hold a mapping of keys to values.")
    return data


def parse_overrides(tokens: list[str]) -> dict:
    """``--key value`` / ``--key=value`` / ``--task.key value`` pairs into a nested mapping (values stay
    strings and are converted by ``build``; ``--flag`` alone means true)."""
    out: dict = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise GfnlmError(f"Unexpected argument {token!r}; options look like --key value.")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value = tokens[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        key = key.replace("-", "_")
        parts = key.split(".")
        if not all(parts):
            raise GfnlmError(f"Malformed option {token!r}; options look like --key value or --task.key value.")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise GfnlmError(f"Option --{part} is given both as a value and as a section (--{key}).")
        if isinstance(target.get(parts[-1]), dict):
            raise GfnlmError(f"Option --{key} is a section; set its keys as --{key}.KEY value.")
        target[parts[-1]] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
