"""One policy for every reward temperature: the policy reads T in its prompt ("[T=0.85] " before X),
the reward does not. Each micro-batch draws T from the configured values or range (rounded to two
decimals, so the tag is a short fixed text) and its loss uses R^(1/T); at sampling time the same tag
selects the target temperature without retraining.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from gfnlm.errors import GfnlmError


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


class TemperatureConditioning:
    def __init__(self, spec: str, tag: Callable[[float], Sequence[int]]):
        self.kind, self.values = parse_temperatures(spec)
        self.tag = tag

    def draw(self, rng: random.Random) -> float:
        if self.kind == "values":
            return self.values[rng.randrange(len(self.values))]
        return round(rng.uniform(*self.values), 2)

    def covers(self, temperature: float) -> bool:
        if self.kind == "values":
            return any(abs(temperature - v) < 1e-9 for v in self.values)
        return self.values[0] - 1e-9 <= temperature <= self.values[1] + 1e-9

    def policy_prompt(self, prompt: Sequence[int], temperature: float) -> tuple[int, ...]:
        if not self.covers(temperature):
            raise GfnlmError(f"The policy was trained for temperatures {self.describe()}, not {temperature:g}.")
        return tuple(self.tag(temperature)) + tuple(prompt)

    def describe(self) -> str:
        return f"{self.values[0]:g}..{self.values[1]:g}" if self.kind == "range" else ", ".join(f"{v:g}" for v in self.values)


def text_tag(tokenizer) -> Callable[[float], Sequence[int]]:
    """The default tag: the text "[T=0.85] " in the model's own tokens."""
    if tokenizer is None:
        raise GfnlmError("A temperature-conditional policy needs a tokenizer to write T into its prompt.")
    return lambda t: tokenizer.encode(f"[T={t:.2f}] ", add_special_tokens=False)
