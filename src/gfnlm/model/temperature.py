"""One policy for every reward temperature. Each micro-batch draws T from the configured values or range
(rounded to two decimals) and its loss uses R^(1/T); at sampling time the same T selects the target
temperature without retraining. The policy reads T in one of two ways (``temperature_input``):

- ``embedding`` (default): a learned vector e(T) added to the policy's input embedding at every position
  (``TemperatureEmbedding``), trained with the LoRA weights; optionally (``temperature_logit_scale``) also
  a learned factor exp(c(T)) on the policy's logits, so that T can sharpen every next-token distribution
  at once, as tempering the reward does, (``temperature_stop_offset``) a learned offset s(T) on the
  logit of the stop token, so that T can move when sequences end, which a common factor on all logits
  cannot, and (``temperature_adapter_scale``) a learned factor exp(g(T)) on the output of every LoRA layer,
  so that the adapter's whole correction to the base model can shrink toward the flat end of the range (at
  T = 1 the target is the base model itself), or (``temperature_adapter_gate``) one such factor per LoRA
  layer and rank, on the r inner activations A x, so that the adapter can also turn other directions on at
  other T;
- ``text``: a tag in its prompt ("[T=0.85] " before X).

With ``temperature_loss_weight`` each micro-batch's loss is multiplied by (T / T_max)^2, so that every T
pulls on the shared weights alike (the squared residual of R^(1/T) otherwise grows as 1/T^2).

The reward never reads T: it runs the base model (adapter off), which sees neither the tag nor e(T).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from gfnlm.infra.errors import GfnlmError

TEMPERATURE_INPUTS = ("embedding", "text")


def parse_temperatures(spec: str) -> tuple[str, tuple[float, ...]]:
    """"lo:hi" -> ("range", (lo, hi)); "a,b,c" -> ("values", (a, b, c)). Raises a clear error otherwise."""
    text = str(spec).strip()
    kind, parts = ("range", text.split(":")) if ":" in text else ("values", text.split(","))
    try:
        values = tuple(float(p) for p in parts if p.strip())
    except ValueError as exc:
        raise GfnlmError(f"conditional_temperatures {spec!r}: write 'lo:hi' (a range) or 'a,b,...' (values).") from exc
    if not values or any(not v > 0 or v != v or v == float("inf") for v in values):
        raise GfnlmError(f"conditional_temperatures {spec!r}: temperatures must be positive finite numbers.")
    if kind == "range" and (len(values) != 2 or values[0] >= values[1]):
        raise GfnlmError(f"conditional_temperatures {spec!r}: a range is 'lo:hi' with lo < hi.")
    return kind, values


class TemperatureEmbedding(torch.nn.Module):
    """e(T) = a + x(T) b, with x(T) = 1/T mapped linearly onto [-1, 1] over the trained temperatures (1/T is
    the scale of the tempered log-reward). a = b = 0 at the start, so the policy starts as the base model.
    With ``logit_scale`` the policy's logits are also multiplied by exp(c(T)), c(T) = u + x(T) v, u = v = 0
    at the start. With a ``stop_token`` the logit of that token (the first token of the task's terminator)
    is then shifted by s(T) = b + x(T) w, b = w = 0 at the start (without ``stop_offset_bias``, b stays 0 and
    ``stop_offset`` holds w alone). With ``adapter_scale`` the output of every LoRA layer of the policy is
    multiplied by exp(g(T)), g(T) = g0 + x(T) g1, g0 = g1 = 0 at the start; with ``adapter_gate`` = (L, r) the
    inner activations A x of LoRA layer l are multiplied elementwise by exp(G0[l] + x(T) G1[l]), G0 = G1 = 0 at
    the start (layers numbered in the model's module order). ``temperature`` is set only inside
    ``TemperatureConditioning.at``; ``Policy`` applies them while it is set and the policy's own adapter runs."""

    def __init__(self, hidden_size: int, low: float, high: float, logit_scale: bool = False,
                 stop_token: int | None = None, stop_offset_bias: bool = True, adapter_scale: bool = False,
                 adapter_gate: tuple[int, int] | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2, hidden_size))
        self.logit_scale = torch.nn.Parameter(torch.zeros(2)) if logit_scale else None
        self.stop_offset = (torch.nn.Parameter(torch.zeros(2 if stop_offset_bias else 1))
                            if stop_token is not None else None)
        self.adapter_scale = torch.nn.Parameter(torch.zeros(2)) if adapter_scale else None
        self.adapter_gate = torch.nn.Parameter(torch.zeros(2, *adapter_gate)) if adapter_gate else None
        self.stop_token = stop_token
        self.low, self.high = low, high
        self.temperature: float | None = None

    def position(self, temperature: float) -> float:
        if self.high == self.low:
            return 0.0
        return (2 / temperature - 1 / self.low - 1 / self.high) / (1 / self.low - 1 / self.high)

    def offset(self) -> torch.Tensor:
        return self.weight[0] + self.position(self.temperature) * self.weight[1]

    def exp_linear(self, pair: torch.Tensor) -> torch.Tensor:
        """exp(pair[0] + x(T) pair[1]): the form of every learned factor (on the logits, on the LoRA layers)."""
        return torch.exp(pair[0] + self.position(self.temperature) * pair[1])

    def scale(self) -> torch.Tensor:
        return self.exp_linear(self.logit_scale)

    def stop_shift(self) -> torch.Tensor:
        slope = self.position(self.temperature) * self.stop_offset[-1]
        return self.stop_offset[0] + slope if len(self.stop_offset) == 2 else slope

    def adapter_factor(self) -> torch.Tensor:
        return self.exp_linear(self.adapter_scale)

    def gate_factors(self, layer: int) -> torch.Tensor:
        """The r factors on LoRA layer ``layer``'s inner activations."""
        return self.exp_linear(self.adapter_gate[:, layer])

    def logit_parameters(self) -> list[torch.nn.Parameter]:
        """The scalars that act on the logits."""
        return [p for p in (self.logit_scale, self.stop_offset) if p is not None]

    def scalar_parameters(self) -> list[torch.nn.Parameter]:
        """Every scalar of the conditioning (trained at their own learning rate): those on the logits and the
        adapter's factors."""
        return self.logit_parameters() + [p for p in (self.adapter_scale, self.adapter_gate) if p is not None]

    def adjust_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self.logit_scale is not None:
            logits = logits * self.scale().to(logits.dtype)
        if self.stop_offset is not None:
            is_stop = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
            is_stop[self.stop_token] = 1
            logits = logits + is_stop * self.stop_shift().to(logits.dtype)
        return logits


class TemperatureConditioning:
    def __init__(self, spec: str, tag: Callable[[float], Sequence[int]], reads: str = "text"):
        self.kind, self.values = parse_temperatures(spec)
        self.tag = tag
        self.reads = reads

    @classmethod
    def for_run(cls, config, task) -> TemperatureConditioning:
        """The conditioning a run was trained with; the text tag is built when first used (the task's
        tokenizer exists only once the model is loaded)."""
        if config.temperature_input == "text":
            return cls(config.conditional_temperatures, lambda t: task.temperature_tag()(t))
        return cls(config.conditional_temperatures, lambda t: (), reads="embedding")

    def draw(self, rng: random.Random) -> float:
        """One of the values, or a point of the range drawn from Beta(1/2, 1/2): denser near the ends,
        which are the hardest to reach by interpolation and where users evaluate."""
        if self.kind == "values":
            return self.values[rng.randrange(len(self.values))]
        low, high = self.values
        return round(low + (high - low) * rng.betavariate(0.5, 0.5), 2)

    def loss_weight(self, temperature: float) -> float:
        """(T / T_max)^2: the loss of R^(1/T) times T^2 is that of T log pi against log R, alike for every T."""
        return (temperature / max(self.values)) ** 2

    def covers(self, temperature: float) -> bool:
        if self.kind == "values":
            return any(abs(temperature - v) < 1e-9 for v in self.values)
        return self.values[0] - 1e-9 <= temperature <= self.values[1] + 1e-9

    def check(self, temperature: float) -> None:
        if not self.covers(temperature):
            raise GfnlmError(f"The policy was trained for temperatures {self.describe()}, not {temperature:g}.")

    def policy_prompt(self, prompt: Sequence[int], temperature: float) -> tuple[int, ...]:
        self.check(temperature)
        return tuple(self.tag(temperature)) + tuple(prompt)

    @contextmanager
    def at(self, policy, temperature: float) -> Iterator[Callable[[Sequence[int]], tuple[int, ...]]]:
        """Inside this block the policy reads ``temperature`` (its embedding is set); yields the function
        X -> the prompt the policy reads."""
        self.check(temperature)
        embedding = policy.temperature_embedding
        if self.reads == "embedding" and embedding is None:
            raise GfnlmError("This conditioning reads T through a temperature embedding; the policy has none "
                             "(Policy.add_temperature_embedding).")
        if embedding is not None:
            embedding.temperature = temperature
        try:
            yield lambda prompt: self.policy_prompt(prompt, temperature)
        finally:
            if embedding is not None:
                embedding.temperature = None

    def describe(self) -> str:
        return f"{self.values[0]:g}..{self.values[1]:g}" if self.kind == "range" else ", ".join(f"{v:g}" for v in self.values)


def text_tag(tokenizer) -> Callable[[float], Sequence[int]]:
    """The default tag: the text "[T=0.85] " in the model's own tokens."""
    if tokenizer is None:
        raise GfnlmError("A temperature-conditional policy needs a tokenizer to write T into its prompt.")
    return lambda t: tokenizer.encode(f"[T={t:.2f}] ", add_special_tokens=False)
