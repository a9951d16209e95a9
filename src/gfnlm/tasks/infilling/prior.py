"""A prior p_LM for a task: fine-tune the base LM (LoRA, TRL SFT) on the task's training texts, such as
whole training stories, merge the adapter into the weights and save a Hugging Face model folder. Later
runs load it with ``--model DIR``: it is then the reward model and the policy's starting point."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from gfnlm.baselines.sft import SupervisedSettings, supervised_finetune
from gfnlm.infra.errors import GfnlmError


def check_prior(spec, out_dir: str | Path) -> None:
    """The cheap checks, before the model is loaded."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise GfnlmError(f"{out} already exists and is not empty; choose another --out.")
    if not hasattr(spec.task, "prior_examples"):
        raise GfnlmError(f"Task {spec.task_name} has no training texts for a prior; tasks with one: infilling.")


def finetune_prior(spec, policy, out_dir: str | Path, settings: SupervisedSettings) -> Path:
    """``policy``: the run's model with a fresh adapter (``gfnlm.runs.prepare_model(spec)``)."""
    check_prior(spec, out_dir)
    out = Path(out_dir)
    examples = spec.task.prior_examples()
    stats = supervised_finetune(policy, examples, settings)
    merged = policy.model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    policy.tokenizer.save_pretrained(tmp)
    (tmp / "gfnlm_prior.json").write_text(json.dumps({
        "task": spec.task_name, "base_model": spec.config.model, "texts": len(examples), "epochs": settings.epochs,
        "lr": settings.lr, "final_loss": stats["loss"], "updates": stats["steps"], "seconds": stats["seconds"]}, indent=1))
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)  # the folder appears whole or not at all
    print(f"Prior: {out.resolve()} ({len(examples)} texts, final loss {stats['loss']:.3f}); train with --model {out}")
    return out
