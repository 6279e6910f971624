"""`arithmetic`: reasoning-gym's basic_arithmetic, seeded, with difficulty knobs (single values or ranges)."""

from __future__ import annotations

import ast
import operator
from fractions import Fraction
from typing import ClassVar

import reasoning_gym
from pydantic import Field, field_validator

from ttscale.benchmarks._common import MathBenchmark, reasoning_gym_seed, take
from ttscale.types import Problem

OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class ArithmeticBenchmark(MathBenchmark):
    """Integer arithmetic (+ - * /, parentheses, negation): `terms` operands of up to `digits` digits.

    `terms` and `digits` take one value (3) or an inclusive range ("2-4"): with a range every
    problem draws its own, and its difficulty is its own terms x digits (mixed difficulty).
    """

    name: ClassVar[str] = "arithmetic"

    seed: int = Field(default=0, ge=0)
    size: int = Field(default=100, ge=1)
    terms: int | str = Field(default=2, description="operands per expression: N or a range LO-HI (>= 2)")
    digits: int | str = Field(default=1, description="digits per operand: N or a range LO-HI (1-10; divisors may have fewer)")

    @field_validator("terms", "digits")
    @classmethod
    def _valid_range(cls, value: int | str, info) -> int | str:
        low, high = parse_range(value, info.field_name)
        floor, ceiling = (2, 1000) if info.field_name == "terms" else (1, 10)
        if not floor <= low <= high <= ceiling:
            raise ValueError(f"must be a number or a range LO-HI with {floor} <= LO <= HI <= {ceiling}, got {value!r}")
        return value

    def load(self, *, limit: int | None = None) -> list[Problem]:
        """The first `limit` of `size` generated problems (the same for the same options)."""
        (min_terms, max_terms), (min_digits, max_digits) = parse_range(self.terms), parse_range(self.digits)
        dataset = reasoning_gym.create_dataset(
            "basic_arithmetic",
            seed=reasoning_gym_seed(self.seed),
            size=self.size,
            min_terms=min_terms,
            max_terms=max_terms,
            min_digits=min_digits,
            max_digits=max_digits,
        )
        return [
            self.make_problem(
                id=f"arithmetic-t{self.terms}d{self.digits}-s{self.seed}-{index}",
                question=item["question"],
                # reasoning-gym floor-divides where its divisibility fix-up misses (about 1% of
                # items with 4+ terms: "-6 / -( 6 + -2 + 5 )" gives 0); the gold is the exact value.
                answer=exact_value(item["metadata"]["expression"]),
                # Each item's own draw, so a mixed-difficulty set grades each problem by itself.
                difficulty=float(item["metadata"]["num_terms"] * item["metadata"]["num_digits"]),
                expression=item["metadata"]["expression"],
            )
            for index, item in zip(range(take(self.size, limit)), dataset)
        ]


def parse_range(value: int | str, field: str = "value") -> tuple[int, int]:
    """(low, high) from 3, "3" or "2-4"; a clear error naming `field` otherwise."""
    if isinstance(value, int):
        return value, value
    low, sep, high = str(value).strip().partition("-")
    try:
        return (int(low), int(high)) if sep else (int(low), int(low))
    except ValueError:
        raise ValueError(f"{field}: expected a number or a range LO-HI such as 2-4, got {value!r}") from None


def exact_value(expression: str) -> str:
    """The exact value of an arithmetic expression, as an integer or a reduced fraction "p/q"."""
    return str(_evaluate(ast.parse(expression, mode="eval").body))


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError(f"unexpected element in arithmetic expression: {ast.dump(node)}")
