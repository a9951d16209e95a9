"""Arithmetic problems for latent tool-using chains, generated from a seed.

A problem is a chain of operands joined by + and - ("3 + 5 - 6"); its query is
"Question: 3 + 5 - 6 = ? Answer:", its gold rationale the left-to-right chain of calculator calls
"3 + 5 = 8 , 8 - 6 = 2", and its answer "2". Splits: a small training set (by default 50 problems
with 3-4 operands, 10 of them with gold rationales), test sets with 3 operands ("simple"), 4 ("hard")
and 5 ("ood-5"), and optionally a validation set drawn like the training set (for tuning); no query
appears twice across (or within) them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.seeding import python_rng


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]
    operators: tuple[str, ...]  # len(operands) - 1 of "+" / "-"

    @property
    def expression(self) -> str:
        parts = [str(self.operands[0])]
        for op, x in zip(self.operators, self.operands[1:]):
            parts += [op, str(x)]
        return " ".join(parts)

    @property
    def query(self) -> str:
        return f"Question: {self.expression} = ? Answer:"

    @property
    def answer(self) -> int:
        value = self.operands[0]
        for op, x in zip(self.operators, self.operands[1:]):
            value = value + x if op == "+" else value - x
        return value

    @property
    def rationale(self) -> str:
        """Left-to-right calculator calls: '3 + 5 = 8 , 8 - 6 = 2'."""
        steps, value = [], self.operands[0]
        for op, x in zip(self.operators, self.operands[1:]):
            result = value + x if op == "+" else value - x
            steps.append(f"{value} {op} {x} = {result}")
            value = result
        return " , ".join(steps)


def random_problem(rng: random.Random, n_operands: int, max_operand: int = 9) -> Problem:
    return Problem(tuple(rng.randint(0, max_operand) for _ in range(n_operands)),
                   tuple(rng.choice("+-") for _ in range(n_operands - 1)))


@dataclass
class ArithmeticData:
    train: list[Problem]
    gold: list[Problem]  # the training problems whose gold rationale is given
    tests: dict[str, list[Problem]]  # by split name; "validation" (when drawn) is one of them


def generate(seed: int = 0, train_size: int = 50, gold_size: int = 10, test_size: int = 200,
             train_operands: tuple[int, ...] = (3, 4), test_operands: dict[str, int] | None = None,
             max_operand: int = 9, validation_size: int = 0) -> ArithmeticData:
    """Seeded splits; no query appears twice across (or within) them. The validation split is drawn last, so
    asking for it leaves the other splits as they were."""
    test_operands = test_operands or {"simple": 3, "hard": 4, "ood-5": 5}
    if gold_size > train_size:
        raise GfnlmError(f"gold_size ({gold_size}) exceeds train_size ({train_size}).")
    if min(train_operands + tuple(test_operands.values())) < 2:
        raise GfnlmError("problems need at least 2 operands.")
    rng = python_rng(seed)
    seen: set[str] = set()

    def draw(n: int, operand_counts: tuple[int, ...]) -> list[Problem]:
        out, tries = [], 0
        while len(out) < n:
            tries += 1
            if tries > 100 * n + 1000:
                raise GfnlmError(f"cannot draw {n} distinct problems with {operand_counts} operands of at most "
                                 f"{max_operand}; ask for fewer.")
            problem = random_problem(rng, rng.choice(operand_counts), max_operand)
            if problem.query not in seen:
                seen.add(problem.query)
                out.append(problem)
        return out

    train = draw(train_size, train_operands)
    tests = {name: draw(test_size, (k,)) for name, k in test_operands.items()}
    if validation_size:
        tests["validation"] = draw(validation_size, train_operands)
    return ArithmeticData(train, train[:gold_size], tests)
