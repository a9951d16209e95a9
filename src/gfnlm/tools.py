"""Tools the environment runs while the policy writes: their output is spliced into the trajectory as
non-policy tokens (in the reward's context, not in the policy's log-probabilities or the loss).

A Tool sees the text written so far after each policy token and may answer with text to insert.
``ToolHook`` adapts tools to the sampler's ``insert_hook``; the spliced tokens are stored with the
trajectory, so replaying it from the buffer reproduces exactly the states it was generated in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from gfnlm.calculator import calculate


class Tool(ABC):
    @abstractmethod
    def respond(self, text: str) -> str | None:
        """Text to insert after ``text`` (everything written so far), or None to stay silent."""


class Calculator(Tool):
    """After "=", writes the value of the expression since the last separator, a previous "=" or the
    prompt's "Answer:" ("... Answer: 3 + 5 =" -> " 8"; "3 + 5 = 8 - 6 =" -> " 2"). An expression it
    cannot evaluate gets ``failure`` instead."""

    def __init__(self, separators: str = ",\n:=", failure: str = " ?"):
        self.separators = separators
        self.failure = failure

    def respond(self, text: str) -> str | None:
        if not text.endswith("="):
            return None
        body = text[:-1]
        start = max(body.rfind(s) for s in self.separators) + 1 if self.separators else 0
        result = calculate(body[start:])
        return self.failure if result is None else f" {result}"


class ToolHook:
    """The sampler's insert hook: decode the row's stream, ask each tool, encode the first answer."""

    def __init__(self, tools: Sequence[Tool], tokenizer, trigger_suffixes: Sequence[str] = ("=",)):
        self.tools = list(tools)
        self.tokenizer = tokenizer
        self.trigger_suffixes = tuple(trigger_suffixes)

    def __call__(self, row: int, stream: list[int]) -> list[int]:
        if not stream or not self.tokenizer.decode(stream[-1:]).endswith(self.trigger_suffixes):
            return []  # cheap check first: decoding the whole stream each step is not needed
        text = self.tokenizer.decode(stream)
        for tool in self.tools:
            answer = tool.respond(text)
            if answer:
                return self.tokenizer.encode(answer, add_special_tokens=False)
        return []
