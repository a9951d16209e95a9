"""A batch of sampled (or replayed) latent sequences Z, each attached to one prompt X."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Trajectories:
    """Z for every row, without the terminator.

    prompts:      the distinct prompts of this batch, as token ids
    prompt_index: (B,) which of ``prompts`` each row continues
    tokens:       (B, L) token ids of Z, right-padded with 0
    lengths:      (B,) number of tokens of Z (the trajectory visits states s_0..s_n, n = length)
    policy_mask:  (B, L) True where the policy chose the token, False for inserted (tool) tokens and padding
    prompt_keys:  a stable key per distinct prompt (replay buffer and log Z table index)
    """

    prompts: list[tuple[int, ...]]
    prompt_index: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    policy_mask: torch.Tensor
    prompt_keys: list[str]

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def max_length(self) -> int:
        return self.tokens.shape[1]

    def row(self, b: int) -> list[int]:
        return self.tokens[b, : int(self.lengths[b])].tolist()

    def row_policy_mask(self, b: int) -> list[bool]:
        return self.policy_mask[b, : int(self.lengths[b])].tolist()

    def row_prompt(self, b: int) -> tuple[int, ...]:
        return self.prompts[int(self.prompt_index[b])]

    def row_key(self, b: int) -> str:
        return self.prompt_keys[int(self.prompt_index[b])]

    def state_mask(self) -> torch.Tensor:
        """(B, L+1) True for the states s_0..s_n that each trajectory visits."""
        steps = torch.arange(self.max_length + 1, device=self.lengths.device)
        return steps[None, :] <= self.lengths[:, None]

    @staticmethod
    def from_rows(
        prompts: Sequence[Sequence[int]],
        prompt_keys: Sequence[str],
        prompt_index: Sequence[int],
        rows: Sequence[Sequence[int]],
        policy_masks: Sequence[Sequence[bool]] | None = None,
        device: torch.device | str = "cpu",
    ) -> Trajectories:
        if policy_masks is None:
            policy_masks = [[True] * len(r) for r in rows]
        width = max((len(r) for r in rows), default=0)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for b, (r, m) in enumerate(zip(rows, policy_masks)):
            if len(r) != len(m):
                raise ValueError("a policy mask must have one entry per token")
            tokens[b, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[b, : len(m)] = torch.tensor(list(m), dtype=torch.bool)
        return Trajectories(
            prompts=[tuple(p) for p in prompts],
            prompt_index=torch.tensor(list(prompt_index), dtype=torch.long, device=device),
            tokens=tokens.to(device),
            lengths=torch.tensor([len(r) for r in rows], dtype=torch.long, device=device),
            policy_mask=mask.to(device),
            prompt_keys=list(prompt_keys),
        )

    def select(self, rows: torch.Tensor) -> Trajectories:
        lengths = self.lengths[rows]
        width = int(lengths.max()) if len(lengths) else 0
        return Trajectories(
            prompts=self.prompts,
            prompt_index=self.prompt_index[rows],
            tokens=self.tokens[rows, :width],
            lengths=lengths,
            policy_mask=self.policy_mask[rows, :width],
            prompt_keys=self.prompt_keys,
        )
