"""Cross-fitting for EM's M-step (``task.m_cross_fit`` = F folds): every training example gets rationales drawn
by a q that never saw its label, as a test sentence's are, and the M-step is checked on all N examples.

Why: q's rationales for its own training examples were trained to make the true label likely, so a likelihood
fitted on them learns to read the label off Z, which a test sentence's rationale does not carry; and a check on a
few held-out examples (``m_validation``) is both noisy and costs the E-step those examples.

How: the training examples are split into F seeded folds. For fold f an auxiliary E-step trains q_-f (the
policy's LoRA, restarted from one fixed initialization) on the other folds' examples, for the run's steps scaled
by their share (reward-temperature horizon and warm-up scaled alike), against the same judge as the main E-step,
in its own folder ``cross-fit/fold-f`` of the run (checkpointed, resumed and, in later EM rounds, re-scored like
the main run). Fold f's M-step rationales are drawn from q_-f. The main E-step trains on all N examples; its q
is the one used at test time and is put back afterwards.

The check is F-fold cross-validation: for each fold, a likelihood fitted (from the judge it would replace) on the
other folds' rationales predicts fold f's labels as at test time (calibrated, probability averaged over the
rationales). The likelihood fitted on all N (``m_epochs``, no early stopping: every example is in its data)
then replaces the old judge only when these out-of-fold predictions beat the old judge's on the same
rationales (``m_keep_only_if_better``).
"""

from __future__ import annotations

import dataclasses
import math
import random

import torch

from gfnlm.baselines.sft import SupervisedSettings
from gfnlm.inference.sampling import sample_per_prompt
from gfnlm.infra.errors import GfnlmError
from gfnlm.tasks.classification.labels import held_out_prediction

FOLD_START_ADAPTER = "cross-fit-start"


def cross_fit_folds(count: int, folds: int, seed: int) -> list[list[int]]:
    """``folds`` seeded, disjoint, near-equal sets of example indices that together cover all ``count``."""
    if not 2 <= folds <= count:
        raise GfnlmError(f"task.m_cross_fit needs between 2 and {count} folds (one example at least in each), "
                         f"got {folds}.")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return [sorted(order[f::folds]) for f in range(folds)]


def fresh_policy_state(policy, seed: int) -> dict[str, torch.Tensor]:
    """A newly initialized LoRA state (B = 0: the base model), the same for a given seed."""
    policy.add_adapter(FOLD_START_ADAPTER, seed=seed)
    state = policy.adapter_state(FOLD_START_ADAPTER)
    policy.model.delete_adapter(FOLD_START_ADAPTER)
    return state


def fold_trainer(trainer, task, fold: list[int], f: int):
    """A trainer of the policy's adapter on every training example outside ``fold``, in its own folder."""
    from gfnlm.core.trainer import Trainer

    c = trainer.config
    share = 1 - len(fold) / len(task.train_set)

    def scaled(n: int) -> int:
        return math.ceil(n * share)

    config = dataclasses.replace(c, steps=scaled(c.steps), warmup_steps=scaled(c.warmup_steps),
                                 reward_temp_horizon=scaled(c.reward_temp_horizon))
    return Trainer(config, task.excluding(set(fold)), trainer.policy, trainer.run_dir / "cross-fit" / f"fold-{f}",
                   trainer.processes)


def cross_fitted_rationales(trainer, task, round_number: int, rounds: int,
                            rescore: bool = True) -> list[list[list[int]]]:
    """``m_rationales`` rationales for every training example, each drawn by the fold q that did not see it,
    trained through EM round ``round_number`` of ``rounds`` (``rescore``: the last M-step changed the judge,
    so a fold's buffers are re-scored when its round starts)."""
    c = task.config
    policy = trainer.policy
    main_q = policy.adapter_copy()
    start = fresh_policy_state(policy, c.seed)
    space = task.action_space().to(policy.device)
    drawn: list[list[list[int]] | None] = [None] * len(task.train_set)
    try:
        for f, fold in enumerate(cross_fit_folds(len(task.train_set), c.m_cross_fit, c.seed)):
            policy.set_adapter_state(start)
            sub = fold_trainer(trainer, task, fold, f)
            sub.target.likelihood_adapter = trainer.target.likelihood_adapter  # the main E-step's judge
            round_start = sub.config.steps * (round_number - 1) // rounds
            if sub.restore() is not None and sub.step == round_start and rescore:
                sub.rescore_buffers()  # as the main run's after the last M-step
                sub.save()
            sub.train(until=sub.config.steps * round_number // rounds)
            generator = torch.Generator(device=policy.device).manual_seed(c.seed * 1000 + round_number * 10 + f)
            for i, zs in zip(fold, sample_per_prompt(policy.model, space, [task.train_set[i].ids for i in fold],
                                                     c.m_rationales, 1.0, generator, c.eval_batch)):
                drawn[i] = zs
    finally:
        policy.set_adapter_state(main_q)
    return drawn


def out_of_fold_prediction(policy, task, rationales, fit_rationales, settings: SupervisedSettings,
                           adapter: str) -> dict:
    """F-fold cross-validation of the M-step: each fold's labels predicted (as by ``held_out_prediction``) by
    a likelihood fitted from the current judge on the other folds' rationales; the current judge is put back."""

    c = task.config
    judge = policy.adapter_copy(adapter)
    log_prob, right = 0.0, 0.0
    try:
        for f, fold in enumerate(cross_fit_folds(len(task.train_set), c.m_cross_fit, c.seed)):
            policy.set_adapter_state(judge, adapter)
            others = [[] if i in fold else zs for i, zs in enumerate(fit_rationales)]
            with policy.adapter(adapter, train=True):
                task.fit_likelihood(policy, others, dataclasses.replace(settings, seed=settings.seed + 100 * (f + 1)))
            scores = held_out_prediction(policy, task, rationales, set(fold))
            log_prob += scores["log_prob"] * len(fold)
            right += scores["accuracy"] * len(fold)
    finally:
        policy.set_adapter_state(judge, adapter)
    n = len(task.train_set)
    return {"log_prob": log_prob / n, "accuracy": right / n}
