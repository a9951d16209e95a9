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

from gfnlm.lm_forward import continuation_log_probs


@torch.no_grad()
def label_log_probs(model, contexts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                    shared_prefix: Sequence[int] = ()) -> torch.Tensor:
    """(N, labels): log p(answer_y | shared_prefix, context_n) for every context and label."""
    pairs = [(tuple(c), tuple(a)) for c in contexts for a in answers]
    scores = continuation_log_probs(model, [c for c, _ in pairs], [a for _, a in pairs], shared_prefix=shared_prefix)
    return scores.view(len(contexts), len(answers))


CONTENT_FREE_TEXTS = ("N/A", "", "[MASK]")


@torch.no_grad()
def content_free_offsets(model, contexts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                         shared_prefix: Sequence[int] = ()) -> torch.Tensor:
    """(labels,): the model's mean log-probability of each label, normalized over the labels, after the
    content-free contexts; label scores minus these offsets are calibrated. No contexts: zeros (uncalibrated)."""
    if not contexts:
        return torch.zeros(len(answers))
    scores = label_log_probs(model, contexts, answers, shared_prefix)
    return torch.log_softmax(scores.float(), dim=-1).mean(dim=0)


def vote(label_lp: torch.Tensor) -> dict[str, torch.Tensor]:
    """Posterior-predictive predictions from (N, K, labels) log p(Y_y | X, Z_k): ``majority`` (each
    rationale votes for its most likely label; ties go to the higher mean probability) and ``mean_prob``
    (argmax of the label probabilities averaged over the K rationales)."""
    probs = torch.softmax(label_lp.float(), dim=-1)
    mean = probs.mean(dim=1)
    votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(dim=1).float()
    majority = (votes + 0.5 * mean).argmax(-1)  # mean < 1, so it only breaks ties between vote counts
    return {"majority": majority, "mean_prob": mean.argmax(-1)}
