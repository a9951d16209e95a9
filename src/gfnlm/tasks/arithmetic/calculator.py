"""A calculator for tool-using chains: a restricted grammar, exact rational arithmetic, no eval.

Grammar (ASCII only; spaces allowed between tokens):
    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := ('+' | '-') factor | number | '(' expr ')'
    number := [0-9]+ ('.' [0-9]+)?

Anything else (names, '**', unicode digits, unbalanced parentheses, division by zero, inputs or
numbers beyond the limits) returns ``None``; the caller writes its failure token. Work is bounded
by the input length, the nesting depth and the size of every intermediate number, so it never hangs.
"""

from __future__ import annotations

from fractions import Fraction

from gfnlm.core.tools import Tool

MAX_CHARS = 200
MAX_DEPTH = 32
MAX_DIGITS = 30  # every intermediate numerator and denominator stays below 10^30
DIGITS = "0123456789"


class _Reject(Exception):
    pass


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        self.pos += 1
        return char

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            value = _checked(value + self.term(depth) if op == "+" else value - self.term(depth))
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            if self.peek() in ("*", "/"):
                raise _Reject("'**' and '//' are not arithmetic here")
            right = self.factor(depth)
            if op == "/":
                if right == 0:
                    raise _Reject("division by zero")
                value = _checked(value / right)
            else:
                value = _checked(value * right)
        return value

    def factor(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise _Reject("nested too deeply")
        char = self.peek()
        if char in ("+", "-"):
            self.take()
            value = self.factor(depth + 1)
            return value if char == "+" else -value
        if char == "(":
            self.take()
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise _Reject("unbalanced parentheses")
            return value
        return self.number()

    def number(self) -> Fraction:
        self.peek()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in DIGITS:
            self.pos += 1
        if self.pos < len(self.text) and self.text[self.pos] == "." and start < self.pos:
            self.pos += 1
            fraction_start = self.pos
            while self.pos < len(self.text) and self.text[self.pos] in DIGITS:
                self.pos += 1
            if fraction_start == self.pos:
                raise _Reject("a number ends with '.'")
        literal = self.text[start: self.pos]
        if not literal:
            raise _Reject("expected a number")
        if len(literal) > MAX_DIGITS:
            raise _Reject("number too long")
        return Fraction(literal)


def _checked(value: Fraction) -> Fraction:
    if abs(value.numerator) >= 10**MAX_DIGITS or value.denominator >= 10**MAX_DIGITS:
        raise _Reject("number too large")
    return value


def evaluate(expression: str) -> Fraction | None:
    """The exact value of ``expression``, or None when it is not a valid, bounded arithmetic expression."""
    if not isinstance(expression, str) or len(expression) > MAX_CHARS or not expression.strip():
        return None
    parser = _Parser(expression)
    try:
        value = parser.expr(0)
        if parser.peek():
            return None  # trailing input that is not part of the expression
        return value
    except _Reject:
        return None


def format_number(value: Fraction) -> str:
    """Integers as integers; other rationals with up to 6 decimals (trailing zeros removed)."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def calculate(expression: str) -> str | None:
    value = evaluate(expression)
    return None if value is None else format_number(value)


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
