"""Tools the environment runs while the policy writes: their output is spliced into the trajectory as
non-policy tokens (in the reward's context, not in the policy's log-probabilities or the loss).

A Tool sees the text written so far after each policy token and may answer with text to insert.
``ToolHook`` adapts tools to the sampler's ``insert_hook``; the spliced tokens are stored with the
trajectory, so replaying it from the buffer reproduces exactly the states it was generated in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence


class Tool(ABC):
    @abstractmethod
    def respond(self, text: str) -> str | None:
        """Text to insert after ``text`` (everything written so far), or None to stay silent."""


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
