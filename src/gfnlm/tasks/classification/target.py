"""The E-step target of classification with a latent rationale Z (EM's posterior over Z).

log R(z_1..z_i stop | X) = log p_LM(z_1..z_i | X) + log p(Y_true | X z_1..z_i) - penalty * [wrong]

p_LM is the base model (adapter off). p(Y | X, Z) is the likelihood: the base model too until EM's first
M-step, then the likelihood adapter (``likelihood_adapter``). Y_y is the whole answer text of label y
(", so it is objective."), scored for every prefix in one packed pass per label. ``wrong`` is 1 where
another label's answer is strictly more likely than the true one after z_1..z_i: a rationale that argues
for the wrong label is penalized (a fixed log-reward offset, tempered with the rest of the reward).

Calibrated (``content_free`` prompts given): every label score is taken relative to the judge's label
prior, log p(Y_y | X z_1..z_i) - c_y, with c_y its mean normalized log-probability of Y_y after content-free
sentences (evaluation/classification.py), under the same model. For the reward's own term this is a
constant per example (its true label is fixed), so the target over Z is unchanged; what changes is
``wrong``: a judge that favours one label for every sentence no longer lets any rationale pass for the
examples of that label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gfnlm.core.trajectories import Trajectories
from gfnlm.model.policy import Policy
from gfnlm.targets.lm_likelihood import LMLikelihood
from gfnlm.tasks.classification.labels import content_free_offsets


class RationaleLabelReward(LMLikelihood):
    def __init__(self, policy: Policy, answers: Sequence[Sequence[int]], label_of: dict[str, int],
                 penalty: float = 50.0, chunk_size: int = 64, content_free: Sequence[Sequence[int]] = ()):
        if len(answers) < 2 or any(len(a) == 0 for a in answers):
            raise ValueError("give a non-empty answer for each of at least two labels")
        super().__init__(policy, [int(answers[0][0])], chunk_size=chunk_size)
        self.answers = [[int(t) for t in a] for a in answers]
        self.label_of = dict(label_of)
        self.penalty = float(penalty)
        self.content_free = [tuple(int(t) for t in c) for c in content_free]
        self.likelihood_adapter: str | None = None  # set by EM once the M-step has trained it
        self.last_label_scores: tuple[Trajectories, torch.Tensor] | None = None

    def label_log_probs(self, traj: Trajectories) -> tuple[torch.Tensor, torch.Tensor]:
        """log p_LM(z_1..z_i | X) (B, L+1) and log p(Y_y | X z_1..z_i) (B, L+1, labels) of every prefix
        (calibrated when content-free prompts are set)."""
        with self.policy.base() as model:
            prefix, first = self._prefix_and_stop(model, traj, self.answers[0])
            if self.likelihood_adapter is None:
                stops = [first] + [self._prefix_and_stop(model, traj, a)[1] for a in self.answers[1:]]
                offsets = content_free_offsets(model, self.content_free, self.answers)
        if self.likelihood_adapter is not None:
            with self.policy.adapter(self.likelihood_adapter) as model:
                stops = [self._prefix_and_stop(model, traj, a)[1] for a in self.answers]
                offsets = content_free_offsets(model, self.content_free, self.answers)
        # recomputed each call (a few short passes): EM's M-step changes the likelihood adapter in place
        return prefix, torch.stack(stops, dim=-1) - offsets.to(prefix.device, prefix.dtype)

    def _prefix_and_labels(self, traj: Trajectories) -> torch.Tensor:
        """(B, L+1, 1 + labels): the prefix log-likelihood, then every label's score, so that one chunked
        pass gives the reward and the label scores kept for ``label_scores``."""
        prefix, stops = self.label_log_probs(traj)
        return torch.cat([prefix[..., None], stops], dim=-1)

    @torch.no_grad()
    def log_rewards(self, traj: Trajectories) -> torch.Tensor:
        both = self._in_chunks(traj, self._prefix_and_labels)
        prefix, stops = both[..., 0], both[..., 1:]
        self.last_label_scores = (traj, stops)
        true = torch.tensor([self.label_of[traj.row_key(b)] for b in range(traj.batch_size)], device=stops.device)
        true_stop = stops.gather(-1, true[:, None, None].expand(-1, stops.shape[1], 1)).squeeze(-1)
        wrong = stops.max(dim=-1).values > true_stop
        return prefix + true_stop - self.penalty * wrong.float()

    def label_scores(self, traj: Trajectories) -> torch.Tensor:
        """log p(Y_y | X z_1..z_i) (B, L+1, labels): from the last reward call when it scored this very
        batch (the training metric of fresh batches costs no second pass), else computed."""
        if self.last_label_scores is not None and self.last_label_scores[0] is traj:
            return self.last_label_scores[1]
        return self.label_log_probs(traj)[1]
