"""One prompt rendering for training and evaluation.

The dataset stage writes alpaca examples with `alpaca_example`; LLaMA-Factory's alpaca converter
turns (instruction, input) into the user turn ``instruction + "\\n" + input`` and applies the chat
template (``qwen``). Evaluation builds the very same user turn with `user_message` and applies the
same template, so the model is scored on exactly the prompt it was trained on.
"""

from __future__ import annotations

import json
from typing import Any

from retrain.records import Entity


def target_entities(entities: list[Entity]) -> list[dict[str, str]]:
    """The canonical output: entities by position in the text (then end, then label), each
    (label, text) once. Identical labels always yield identical targets."""
    seen: set[tuple[str, str]] = set()
    out = []
    for e in sorted(entities, key=lambda e: (e.start, e.end, e.label)):
        pair = (e.label, e.text)
        if pair in seen:
            continue
        seen.add(pair)
        out.append({"label": e.label, "text": e.text})
    return out


def render_output(entities: list[Entity]) -> str:
    """The JSON answer the model learns to print: ``[{"label": ..., "text": ...}]``."""
    return json.dumps(target_entities(entities), ensure_ascii=False)


def alpaca_example(
    instruction: str, text: str, entities: list[Entity], system: str | None = None
) -> dict[str, Any]:
    """One alpaca-format example (LLaMA-Factory's format)."""
    ex: dict[str, Any] = {"instruction": instruction, "input": text, "output": render_output(entities)}
    if system:
        ex["system"] = system
    return ex


def user_message(instruction: str, text: str) -> str:
    """The user turn exactly as LLaMA-Factory's alpaca converter builds it."""
    return f"{instruction}\n{text}" if text else instruction
