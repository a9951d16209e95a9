"""The M-step's calibrated objective (``task.m_objective calibrated``): fit the likelihood adapter on the
score it is judged by at test time, not on the raw next-token loss of the label.

At test time a label's score is log p(Y_y | X, Z) normalized over the labels, minus the judge's own label
prior on content-free sentences (contextual calibration). TRL's SFT loss instead raises the raw probability
of the true label's tokens, which a model can partly meet by moving its label prior; the calibration then
subtracts that move again, so a lower SFT loss need not mean better calibrated predictions. Here the
loss is the cross-entropy of the true label under softmax_y(log p(Y_y | X, Z) - prior_y), with the prior
recomputed from the adapter being trained and differentiated through, as in the test-time score.

It needs every label's score and the prior in one graph, which TRL's trainers do not compute, so the loop is
a plain one: AdamW at a constant learning rate, seeded shuffles, one process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from gfnlm.baselines.sft import BestEpoch, SupervisedSettings
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import Policy
from gfnlm.tasks.classification.labels import rationale_label_log_probs


@dataclass
class LabelledRationale:
    prompt: Sequence[int]  # X
    rationale: Sequence[int]  # Z
    label: int  # index of the true label


def calibrated_label_loss(model, examples: Sequence[LabelledRationale], answers: Sequence[Sequence[int]],
                          content_free: Sequence[Sequence[int]]) -> torch.Tensor:
    """Mean over the examples of -log softmax_y(log p(Y_y | X, Z) - prior_y)[true label] (no prior without
    content-free contexts)."""
    scores = rationale_label_log_probs(model, [e.prompt for e in examples], [[e.rationale] for e in examples],
                                       answers, content_free, grad=torch.is_grad_enabled())[:, 0]
    labels = torch.tensor([e.label for e in examples], device=scores.device)
    return torch.nn.functional.cross_entropy(scores.float(), labels)


def fit_calibrated(policy: Policy, examples: Sequence[LabelledRationale], answers: Sequence[Sequence[int]],
                   content_free: Sequence[Sequence[int]], settings: SupervisedSettings,
                   validation: Sequence[LabelledRationale] = (), patience: int = 2) -> dict:
    """Train the active adapter (inside ``policy.adapter(name, train=True)``) on the calibrated label loss.
    Returns the mean training loss of the last epoch, the optimizer steps and seconds; with ``validation``
    examples, early stopping as in ``supervised_finetune`` (best epoch restored, ``best_epoch`` and
    ``validation_losses`` returned)."""
    if not examples:
        raise GfnlmError("The calibrated M-step needs at least one example.")
    model = policy.model
    weights = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(weights, lr=settings.lr)
    shuffle = torch.Generator().manual_seed(settings.seed)
    per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = max(1, round(settings.epochs * per_epoch))
    losses: list[float] = []
    keeper = BestEpoch(policy, patience) if validation else None
    started, step = time.perf_counter(), 0
    bar = tqdm(total=total, desc="calibrated M-step", disable=not settings.progress, dynamic_ncols=True, leave=False)
    while step < total:
        model.train()
        order = torch.randperm(len(examples), generator=shuffle).tolist()
        epoch_losses = []
        for start in range(0, len(order), settings.batch_size):
            if step == total:
                break
            batch = [examples[i] for i in order[start:start + settings.batch_size]]
            loss = calibrated_label_loss(model, batch, answers, content_free)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(float(loss.detach()))
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{epoch_losses[-1]:.3f}")
        model.eval()
        losses.append(sum(epoch_losses) / len(epoch_losses))
        if keeper:
            with torch.no_grad():
                held = float(calibrated_label_loss(model, validation, answers, content_free))
            if keeper.record(held):
                break
    bar.close()
    out = {"loss": losses[-1], "steps": step, "seconds": time.perf_counter() - started, "epoch_losses": losses}
    if keeper:
        out.update(keeper.restore())
    return out
