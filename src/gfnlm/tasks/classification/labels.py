"""Predicting labels: direct scoring of each label's answer, and posterior-predictive voting over
sampled rationales.

Label probabilities are p(Y_y | context) normalized over the labels, where Y_y is the label's whole
answer text (multi-token labels are scored exactly).

Calibration (``content_free_offsets``): a small LM prefers some label whatever the sentence says; its
preference on content-free sentences ("N/A", "", "[MASK]" in the same prompt) estimates that prior, and
subtracting it from every label score removes it (contextual calibration).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gfnlm.core.lm_forward import continuation_log_probs

LIKELIHOOD_ADAPTER = "likelihood"  # the EM M-step's adapter: p(Y | X, Z)


def label_log_probs(model, contexts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                    shared_prefix: Sequence[int] = ()) -> torch.Tensor:
    """(N, labels): log p(answer_y | shared_prefix, context_n) for every context and label."""
    pairs = [(tuple(c), tuple(a)) for c in contexts for a in answers]
    scores = continuation_log_probs(model, [c for c, _ in pairs], [a for _, a in pairs], shared_prefix=shared_prefix)
    return scores.view(len(contexts), len(answers))


CONTENT_FREE_TEXTS = ("N/A", "", "[MASK]")


def content_free_offsets(model, contexts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                         shared_prefix: Sequence[int] = ()) -> torch.Tensor:
    """(labels,): the model's mean log-probability of each label, normalized over the labels, after the
    content-free contexts; label scores minus these offsets are calibrated. No contexts: zeros (uncalibrated)."""
    if not contexts:
        return torch.zeros(len(answers))
    scores = label_log_probs(model, contexts, answers, shared_prefix)
    return torch.log_softmax(scores.float(), dim=-1).mean(dim=0)


def rationale_label_log_probs(model, prompts: Sequence[Sequence[int]], rationales: Sequence[Sequence[Sequence[int]]],
                              answers: Sequence[Sequence[int]], content_free: Sequence[Sequence[int]] = (),
                              progress: bool = False, desc: str = "score rationales") -> torch.Tensor:
    """(N, K, labels) log p(Z_k Y_y | X_n): log p(Y_y | X_n, Z_k) plus a term that does not depend on the
    label, so normalized over the labels it is p(y | X_n, Z_k); minus the label prior when ``content_free``
    contexts are given. Each X is run once for all its rationales and labels."""
    pairs = [(tuple(p), tuple(z) + tuple(a)) for p, zs in zip(prompts, rationales) for z in zs for a in answers]
    lp = continuation_log_probs(model, [c for c, _ in pairs], [a for _, a in pairs], progress=progress, desc=desc)
    prior = content_free_offsets(model, content_free, answers)
    return lp.view(len(prompts), len(rationales[0]), len(answers)) - prior.to(lp.device)


def vote(label_lp: torch.Tensor) -> dict[str, torch.Tensor]:
    """Posterior-predictive predictions from (N, K, labels) log p(Y_y | X, Z_k): ``majority`` (each
    rationale votes for its most likely label; ties go to the higher mean probability) and ``mean_prob``
    (argmax of the label probabilities averaged over the K rationales)."""
    probs = torch.softmax(label_lp.float(), dim=-1)
    mean = probs.mean(dim=1)
    votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(dim=1).float()
    majority = (votes + 0.5 * mean).argmax(-1)  # mean < 1, so it only breaks ties between vote counts
    return {"majority": majority, "mean_prob": mean.argmax(-1)}


@torch.no_grad()
def held_out_prediction(policy, task, rationales: list[list[list[int]]], held: set[int]) -> dict:
    """How the likelihood adapter predicts the held-out examples' labels as a test sentence's: calibrated
    label scores, averaged as probabilities over q's rationales; the mean log-probability of the true
    label and the accuracy (None without held-out examples)."""
    if not held:
        return {"log_prob": None, "accuracy": None}
    order = sorted(held)
    prompts = [task.train_set[i].ids for i in order]
    probs = torch.softmax(task.rationale_scores(policy, prompts, [rationales[i] for i in order], LIKELIHOOD_ADAPTER),
                          dim=-1).mean(1)
    true = torch.tensor([task.label_of[task.train_set[i].key] for i in order], device=probs.device)
    return {"log_prob": float(probs[torch.arange(len(order)), true].log().mean()),
            "accuracy": float((probs.argmax(-1) == true).float().mean())}
