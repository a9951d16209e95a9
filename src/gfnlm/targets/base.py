"""The Target interface and its algebra (products and powers of targets)."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod

import torch

from gfnlm.core.trajectories import Trajectories


class Target(ABC):
    """An unnormalized distribution over Z given X.

    ``log_rewards(traj)`` returns a float tensor (B, L+1): entry i of row b is the untempered
    log R(z_1..z_i stop | X) of the prefix of length i. Every prefix is scored in one batched call;
    entries past a row's length and at states that cannot terminate are ignored by the objectives.
    The termination event is the target's own business: a single token, a token sequence, or an
    answer Y appended after Z (multi-token terminators score all prefixes in one packed pass).
    """

    @abstractmethod
    def log_rewards(self, traj: Trajectories) -> torch.Tensor: ...

    def twist_log_rewards(self, traj: Trajectories) -> torch.Tensor:
        """The prefix log-rewards SMC builds its intermediate targets from (any finite values are valid). A
        target that is zero on prefixes whose completions may still have reward (a hard constraint not yet
        met) returns a smoothed version here, so that no particle that could still succeed gets weight 0."""
        return self.log_rewards(traj)

    def terminal_log_rewards(self, traj: Trajectories, twist: bool = False) -> torch.Tensor:
        """(B,) log R(Z stop | X) of each whole row (the twist's with ``twist``): what evaluation, importance
        sampling and SMC need. Targets whose every-prefix pass is costly compute only this."""
        rewards = self.twist_log_rewards(traj) if twist else self.log_rewards(traj)
        return rewards[torch.arange(traj.batch_size, device=rewards.device), traj.lengths.to(rewards.device)]

    def __mul__(self, other: Target) -> Product:
        return Product([self, other])

    def __pow__(self, exponent: float) -> Power:
        return Power(self, exponent)


class Product(Target):
    """R = R_1 * R_2 * ... (log-rewards add): prior x likelihood x constraint."""

    def __init__(self, factors: list[Target]):
        flat: list[Target] = []
        for f in factors:
            flat.extend(f.factors if isinstance(f, Product) else [f])
        self.factors = flat

    def log_rewards(self, traj: Trajectories) -> torch.Tensor:
        return sum(f.log_rewards(traj) for f in self.factors)

    def twist_log_rewards(self, traj: Trajectories) -> torch.Tensor:
        return sum(f.twist_log_rewards(traj) for f in self.factors)

    def terminal_log_rewards(self, traj: Trajectories, twist: bool = False) -> torch.Tensor:
        return sum(f.terminal_log_rewards(traj, twist) for f in self.factors)


class Power(Target):
    """R^exponent, e.g. a tempered likelihood p(Z | X)^(1/T) with exponent 1/T."""

    def __init__(self, base: Target, exponent: float):
        self.base = base
        self.exponent = float(exponent)

    def log_rewards(self, traj: Trajectories) -> torch.Tensor:
        return self.exponent * self.base.log_rewards(traj)

    def twist_log_rewards(self, traj: Trajectories) -> torch.Tensor:
        return self.exponent * self.base.twist_log_rewards(traj)

    def terminal_log_rewards(self, traj: Trajectories, twist: bool = False) -> torch.Tensor:
        return self.exponent * self.base.terminal_log_rewards(traj, twist)


class OwnPrompts(Target):
    """A target that reads its own prompt for each prompt key instead of the policy's: the policy may see
    more than the reward conditions on (e.g. the story's ending, which the reward appends after Z)."""

    def __init__(self, base: Target, prompts: dict[str, tuple[int, ...]]):
        self.base = base
        self.prompts = dict(prompts)

    def log_rewards(self, traj: Trajectories) -> torch.Tensor:
        missing = [k for k in traj.prompt_keys if k not in self.prompts]
        if missing:
            raise KeyError(f"no reward prompt for {missing[0]!r}")
        return self.base.log_rewards(dataclasses.replace(traj, prompts=[self.prompts[k] for k in traj.prompt_keys]))
