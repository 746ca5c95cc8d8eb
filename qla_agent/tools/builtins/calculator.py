"""A calculator that evaluates arithmetic by walking Python's AST: no eval, no names, bounded sizes.

Allowed: int and float literals, + - * / // % **, unary + -, parentheses, the constants pi, e, tau,
and the functions below. Integers are kept below 10,000 bits; exponents are checked before they run.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from qla_agent.errors import ToolError
from qla_agent.tools.registry import Tool

MAX_EXPRESSION_CHARS = 500
MAX_INT_BITS = 10_000
MAX_FACTORIAL = 1_000

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: Any) -> int:
    if not isinstance(n, int) or not 0 <= n <= MAX_FACTORIAL:
        raise ToolError(f"factorial takes an integer from 0 to {MAX_FACTORIAL}, got {n!r}")
    return math.factorial(n)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "atan2": math.atan2, "hypot": math.hypot, "floor": math.floor, "ceil": math.ceil,
    "abs": abs, "round": round, "min": min, "max": max, "factorial": _factorial,
}


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result as text."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is {len(expression)} characters; the limit is {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ToolError(f"cannot parse {expression!r}: {e.msg}") from e
    try:
        value = _eval(tree.body)
    except ZeroDivisionError as e:
        raise ToolError(f"division by zero in {expression!r}") from e
    except (OverflowError, ValueError) as e:
        raise ToolError(f"cannot evaluate {expression!r}: {e}") from e
    if isinstance(value, float):
        return repr(value) if not value.is_integer() or abs(value) >= 1e16 else str(int(value))
    return str(value)


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords:
            raise ToolError(f"{node.func.id}() takes positional arguments only")
        return _checked(_FUNCTIONS[node.func.id](*(_eval(a) for a in node.args)))
    raise ToolError(f"not allowed in a calculation: {_describe(node)}; use numbers, + - * / // % **, "
                    f"parentheses, {', '.join(_CONSTANTS)} and {', '.join(_FUNCTIONS)}()")


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1:
        if abs(exponent) * abs(base).bit_length() > MAX_INT_BITS:
            raise ToolError(f"{base} ** {exponent} is too large (over {MAX_INT_BITS} bits)")
    if isinstance(exponent, (int, float)) and abs(exponent) > 1e6 and isinstance(base, (int, float)):
        if abs(base) > 1:
            raise ToolError(f"exponent {exponent} is too large")


def _checked(value: Any) -> Any:
    if isinstance(value, complex):
        raise ToolError("the result is a complex number; only real arithmetic is supported")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError(f"the result is {value}; the calculation overflows or is undefined")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"an intermediate result has {value.bit_length()} bits; the limit is {MAX_INT_BITS}")
    return value


def _describe(node: ast.AST) -> str:
    text = ast.unparse(node) if not isinstance(node, ast.expr_context) else type(node).__name__
    return f"{type(node).__name__} {text[:40]!r}"


CALCULATOR = Tool(
    name="calculator",
    description="Evaluate an arithmetic expression, e.g. '2 * (3 + 4) ** 2' or 'sqrt(2) * pi'.",
    parameters={"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"],
                "additionalProperties": False},
    fn=calculate,
)
