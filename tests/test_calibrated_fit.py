"""The M-step's calibrated objective: its loss and gradient against one full forward per (example, label) and
per content-free prompt, and a fit on a tiny problem (labels learned, early stopping restores the best epoch)."""

import pytest
import torch

from gfnlm.baselines.sft import SupervisedSettings
from gfnlm.model.policy import LoraSettings, Policy
from gfnlm.tasks.classification.calibrated_fit import LabelledRationale, calibrated_label_loss, fit_calibrated
from tests.conftest import tiny_llama

ANSWERS = [[8, 3, 2], [8, 3, 5, 1]]  # multi-token labels with a shared start
CONTENT_FREE = [(7,), (2, 5)]


def likelihood_policy(seed: int = 3) -> Policy:
    policy = Policy(tiny_llama(9, seed=seed), None, LoraSettings(r=4, alpha=8))
    policy.add_adapter("likelihood")
    with torch.no_grad():  # a likelihood that differs from the base model
        for name, p in policy.model.named_parameters():
            if ".likelihood." in name:
                p.copy_(torch.randn_like(p) * 0.5)
    return policy


def log_prob(model, context, continuation) -> torch.Tensor:
    """log p(continuation | context) from one full forward (with gradient)."""
    ids = list(context) + list(continuation)
    lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return sum(lp[len(context) + k - 1, t] for k, t in enumerate(continuation))


def naive_loss(model, examples, content_free) -> torch.Tensor:
    prior = torch.zeros(len(ANSWERS))
    for c in content_free:
        prior = prior + torch.log_softmax(torch.stack([log_prob(model, c, a) for a in ANSWERS]), -1) / len(content_free)
    losses = [-torch.log_softmax(torch.stack([log_prob(model, list(e.prompt) + list(e.rationale), a) for a in ANSWERS])
                                 - prior, -1)[e.label] for e in examples]
    return torch.stack(losses).mean()


EXAMPLES = [LabelledRationale((1, 2, 3), (5, 6), 0), LabelledRationale((4, 6), (2,), 1),
            LabelledRationale((1, 2, 3), (4, 4, 1), 1), LabelledRationale((6,), (7, 3), 0)]


@pytest.mark.parametrize("calibrated", [False, True])
def test_calibrated_loss_and_its_gradient_match_naive_passes(calibrated):
    """Value and gradient (through the label scores and through the content-free prior) of the batched loss
    equal those of one full forward per (example, label) and per (content-free prompt, label)."""
    policy = likelihood_policy()
    content_free = CONTENT_FREE if calibrated else []
    with policy.adapter("likelihood", train=True) as model:
        weights = [p for p in model.parameters() if p.requires_grad]
        fast = calibrated_label_loss(model, EXAMPLES, ANSWERS, content_free)
        fast_grad = torch.autograd.grad(fast, weights)
        slow = naive_loss(model, EXAMPLES, content_free)
        slow_grad = torch.autograd.grad(slow, weights)
    assert float(fast.detach()) == pytest.approx(float(slow.detach()), abs=1e-5)
    assert any(g.abs().max() > 1e-4 for g in fast_grad)
    for a, b in zip(fast_grad, slow_grad):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    if calibrated:  # the prior is part of the objective, not a constant
        with policy.adapter("likelihood", train=True) as model:
            uncalibrated = torch.autograd.grad(calibrated_label_loss(model, EXAMPLES, ANSWERS, []), weights)
        assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(fast_grad, uncalibrated))


def test_calibrated_fit_learns_the_labels_and_early_stopping_keeps_the_best_epoch():
    # the label is written in the rationale (token 5 or 6), whatever the sentence
    train = [LabelledRationale(x, (z,), y) for x in [(1, 2), (3, 4), (2, 7)] for z, y in [(5, 0), (6, 1)]]
    policy = likelihood_policy(seed=1)
    settings = SupervisedSettings(epochs=25, lr=3e-2, batch_size=4, seed=0, progress=False)
    with policy.adapter("likelihood", train=True) as model:
        with torch.no_grad():
            before = float(calibrated_label_loss(model, train, ANSWERS, CONTENT_FREE))
        out = fit_calibrated(policy, train, ANSWERS, CONTENT_FREE, settings)
        with torch.no_grad():
            after = float(calibrated_label_loss(model, train, ANSWERS, CONTENT_FREE))
    assert out["steps"] == 25 * 2 and len(out["epoch_losses"]) == 25
    assert before > 0.5 and after < 0.1

    # validation labels that contradict the training ones: the held-out loss rises, training stops after
    # `patience` worse epochs and the best epoch's adapter is put back
    flipped = [LabelledRationale(e.prompt, e.rationale, 1 - e.label) for e in train]
    policy = likelihood_policy(seed=1)
    with policy.adapter("likelihood", train=True) as model:
        out = fit_calibrated(policy, train, ANSWERS, CONTENT_FREE, settings, validation=flipped, patience=2)
        with torch.no_grad():
            kept = float(calibrated_label_loss(model, flipped, ANSWERS, CONTENT_FREE))
    losses = out["validation_losses"]
    assert len(losses) < 25 and len(losses) - out["best_epoch"] == 2
    assert kept == pytest.approx(min(losses), abs=1e-5)
