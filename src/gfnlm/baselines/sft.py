"""Supervised fine-tuning of the policy's LoRA adapter with TRL's SFTTrainer: the SFT baselines of the
tasks. Examples arrive tokenized, with a flag per target token saying whether it is imitated, so text
written by the environment (calculator results) is read as context but never learned as an action.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from gfnlm.core.config import check_range
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import Policy

# TRL's configs default to bf16 autocast and gradient checkpointing. Both outlive the training call
# (accelerate wraps the model's forward in autocast; the checkpointing hooks stay and use_cache is turned
# off), which would change every later score of the shared model; the model's own dtype decides instead.
TRL_KEEP_MODEL_AS_IS = {"bf16": False, "fp16": False, "gradient_checkpointing": False}


@contextmanager
def restores_use_cache(model):
    use_cache = model.config.use_cache
    try:
        yield
    finally:
        model.config.use_cache = use_cache


def with_pad_token(tokenizer):
    """TRL's collators pad batches; a tokenizer without a pad token pads with its end-of-text token (the
    padded positions are masked out of attention and loss)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class SupervisedExample:
    prompt: Sequence[int]  # context only (no loss)
    target: Sequence[int]  # the text to imitate
    trained: Sequence[bool] | None = None  # per target token: in the loss (default: all)


@dataclass
class SupervisedSettings:
    epochs: float = field(default=20.0, metadata={"help": "passes over the examples"})
    lr: float = field(default=5e-4, metadata={"help": "learning rate (constant)"})
    batch_size: int = field(default=4, metadata={"help": "examples per optimizer step (per process)"})
    seed: int = field(default=0, metadata={"help": "seed of the example order"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        check_range("sft.epochs", self.epochs, low=0, low_open=True)
        check_range("sft.lr", self.lr, low=0, low_open=True)
        check_range("sft.batch_size", self.batch_size, low=1)


def _rows(examples: Sequence[SupervisedExample]) -> list[dict]:
    rows = []
    for n, ex in enumerate(examples):
        trained = list(ex.trained) if ex.trained is not None else [True] * len(ex.target)
        if len(trained) != len(ex.target) or not any(trained):
            raise GfnlmError(f"Supervised example {n}: the target needs at least one trained token and one flag "
                             "per token.")
        labels = [-100] * len(ex.prompt) + [t if keep else -100 for t, keep in zip(ex.target, trained)]
        rows.append({"input_ids": [int(t) for t in (*ex.prompt, *ex.target)], "labels": labels})
    return rows


def supervised_finetune(policy: Policy, examples: Sequence[SupervisedExample],
                        settings: SupervisedSettings = SupervisedSettings(),
                        validation: Sequence[SupervisedExample] = (), patience: int = 2) -> dict:
    """Train the active adapter on ``examples`` (cross-entropy of the trained target tokens); returns the
    final training loss, the number of optimizer steps and the seconds taken. The policy stays in eval mode.

    With ``validation`` examples the loss on them is measured after every epoch; training stops after
    ``patience`` epochs without improvement and the adapter is restored to its best epoch (early stopping;
    also returned: ``best_epoch`` and ``validation_losses``)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise GfnlmError("Supervised fine-tuning needs at least one example.")
    rows = _rows(examples)
    keeper = _best_epoch_keeper(policy, patience) if validation else None
    tokenizer = with_pad_token(policy.tokenizer)
    with tempfile.TemporaryDirectory(prefix="gfnlm-sft-") as scratch:
        args = SFTConfig(output_dir=scratch, num_train_epochs=settings.epochs, learning_rate=settings.lr,
                         per_device_train_batch_size=settings.batch_size, lr_scheduler_type="constant",
                         logging_steps=1, save_strategy="no", report_to="none", seed=settings.seed,
                         use_cpu=policy.device.type == "cpu", disable_tqdm=not settings.progress,
                         max_length=None, dataloader_num_workers=0, eval_strategy="epoch" if keeper else "no",
                         per_device_eval_batch_size=settings.batch_size, **TRL_KEEP_MODEL_AS_IS)
        trainer = SFTTrainer(model=policy.model, args=args, train_dataset=Dataset.from_list(rows),
                             eval_dataset=Dataset.from_list(_rows(validation)) if keeper else None,
                             processing_class=tokenizer, callbacks=[keeper] if keeper else None)
        started = time.perf_counter()
        with restores_use_cache(policy.model):
            result = trainer.train()
    policy.model.eval()
    out = {"loss": float(result.training_loss), "steps": int(result.global_step),
           "seconds": time.perf_counter() - started}
    if keeper:
        out.update(keeper.restore())
    return out


class BestEpoch:
    """Early stopping on a validation loss measured after every epoch: keeps a copy of the active adapter at
    its lowest loss, says when ``patience`` epochs have passed without improvement, and puts the best copy
    back (``restore``)."""

    def __init__(self, policy: Policy, patience: int):
        self.policy, self.patience = policy, patience
        self.losses: list[float] = []
        self.best_state = None

    def record(self, loss: float) -> bool:
        """Note an epoch's validation loss; True when training should stop."""
        self.losses.append(loss)
        if loss <= min(self.losses):
            self.best_state = self.policy.adapter_copy(self.policy.model.active_adapter)
            return False
        return len(self.losses) - 1 - self.losses.index(min(self.losses)) >= self.patience

    def restore(self) -> dict:
        if self.best_state is not None:
            self.policy.set_adapter_state(self.best_state, self.policy.model.active_adapter)
        best = self.losses.index(min(self.losses)) if self.losses else None
        return {"best_epoch": None if best is None else best + 1, "validation_losses": self.losses}


def _best_epoch_keeper(policy: Policy, patience: int):
    """``BestEpoch`` as a trainer callback on TRL's per-epoch evaluation."""
    from transformers import TrainerCallback  # heavy: imported when a validation set is given

    class BestEpochCallback(TrainerCallback, BestEpoch):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if self.record(float(metrics["eval_loss"])):
                control.should_training_stop = True
            return control

    return BestEpochCallback(policy, patience)
