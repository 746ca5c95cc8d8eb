"""The tool-call regression corpus (tests/data/tool_calls) and helpers to run a parser over it."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

from qla_agent.tools.parsers import Delta, ParsedMessage, ToolCallParser, merge_deltas, parser_for

CORPUS_DIR = Path(__file__).resolve().parents[1] / "data" / "tool_calls"
TOOLS: list[dict[str, Any]] = json.loads((CORPUS_DIR / "tools.json").read_text())


def load_cases() -> list[dict[str, Any]]:
    """Every case of every corpus file but tools.json."""
    cases = []
    for path in sorted(CORPUS_DIR.glob("*.json")):
        if path.name != "tools.json":
            cases.extend(json.loads(path.read_text(encoding="utf-8")))
    return cases


def case_parser(case: dict[str, Any]) -> ToolCallParser:
    """The parser a case asks for, with deterministic call ids (call_0, call_1, ...)."""
    counter = itertools.count()
    return parser_for(
        case["format"], case.get("tools", TOOLS), starts_in_reasoning=case["starts_in_reasoning"],
        calls_in_reasoning=case.get("calls_in_reasoning", False), new_id=lambda: f"call_{next(counter)}",
    )


def stream_in_chunks(parser: ToolCallParser, text: str, seed: int, max_chunk: int = 9) -> list[Delta]:
    """Feed `text` in random chunk sizes (1..max_chunk, seeded) and return every delta."""
    rng = random.Random(seed)
    stream = parser.stream()
    deltas: list[Delta] = []
    i = 0
    while i < len(text):
        n = rng.randint(1, max_chunk)
        deltas += stream.feed(text[i : i + n])
        i += n
    return deltas + stream.finish()


def streamed(parser: ToolCallParser, text: str, seed: int) -> ParsedMessage:
    """The message a client reassembles from a chunked stream."""
    return merge_deltas(stream_in_chunks(parser, text, seed))
