"""Turn what a model printed into (label, text) entity pairs.

Standard library only: the Airflow side imports this module too.

The model is trained to print ``[{"label": ..., "text": ...}]`` (see `retrain.prompt`), but a
model under evaluation prints whatever it likes. `parse_entities` accepts, in this order:

1. ``<think>…</think>`` blocks are dropped.
2. Markdown code fences (```` ```json … ``` ````): the first fence whose content parses wins.
3. Otherwise the first balanced JSON value (``[…]`` or ``{…}``) anywhere in the text, so prose
   before and after is ignored. Several top-level objects in a row (JSON lines, or objects
   separated by commas without brackets) are read as a list.
4. Repairs, each tried only when the plain parse fails: trailing commas before ``]``/``}``, then
   Python literal syntax (single quotes, ``None``) through `ast.literal_eval`.
5. Shapes: a list of items; a single item object; a wrapper object (``{"entities": [...]}``);
   a label-keyed object (``{"name": ["张三"]}`` or CLUENER's ``{"name": {"张三": [[0, 1]]}}``);
   ``null``/``{}``/``[]`` (no entities).
6. Items: objects whose label key is spelled ``label``/``type``/``entity_type``/``category``/…
   and whose text key is ``text``/``entity``/``value``/``span``/… (case-insensitive); a
   ``[label, text]`` pair; a list of texts under one label. Numbers become strings; items without
   a label or a text are skipped (and counted in ``notes``). Labels and texts are stripped of
   surrounding whitespace. Pairs are deduplicated, first occurrence kept.
7. With no JSON at all, an explicit "no entities" answer (无, 没有实体, 未识别到实体, none,
   no entities, …) is a valid empty prediction.

Anything else — empty output, truncated JSON, bare prose, a list of strings without labels — is
a parse failure: ``ok`` is False, ``entities`` is empty (the sentence is scored as predicting
nothing) and ``error`` says why.

How each output was read (``ParseResult.reading``), for honest figures:

- ``valid``: the output (after dropping a ``<think>`` block) is one JSON value of a known shape.
- ``repaired``: read after documented repairs only: a code fence, text around the JSON value
  (including bracketed prose before it that is itself valid JSON, such as ``[1]``), trailing
  commas, a ``<think>`` block, or an explicit "no entities" phrase.
- ``salvaged``: read only by pulling values out of invalid JSON: an object found inside a
  bracketed chunk that does not parse, several top-level objects read as a list (JSON lines), or
  Python literal syntax (single quotes, ``None``). The lenient reading keeps these entities; the
  strict reading (`is_parsed` False) scores the sentence as predicting nothing.
- ``unparseable``: ``ok`` is False.

Only ``valid`` and ``repaired`` count as parsed for the parse-failure rate and the gate.

`parse_gold` is the strict counterpart for the golden set's alpaca ``output`` field, which the
project itself wrote: exactly a JSON list of ``{"label": str, "text": str}`` or an error.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from retrain.errors import InputError

Pair = tuple[str, str]

# Bump when parsing behaviour changes: cached evaluation results depend on it.
PARSER_VERSION = "2"

#: How an output was read, from the most to the least trustworthy (see the module docstring).
READINGS = ("valid", "repaired", "salvaged", "unparseable")
#: Readings that count as parsed (strict reading, parse-failure rate, gate).
PARSED_READINGS = ("valid", "repaired")

_LABEL_KEYS = (
    "label",
    "type",
    "entity_type",
    "entitytype",
    "category",
    "class",
    "tag",
    "ner_type",
    "实体类别",
    "实体类型",
    "类别",
    "类型",
    "标签",
)
_TEXT_KEYS = (
    "text",
    "entity",
    "entity_text",
    "entitytext",
    "value",
    "span",
    "word",
    "mention",
    "content",
    "实体",
    "实体名称",
    "实体内容",
    "文本",
    "内容",
    "名称",
)
_WRAPPER_KEYS = (
    "entities",
    "entity_list",
    "entitylist",
    "result",
    "results",
    "output",
    "outputs",
    "answer",
    "data",
    "ner",
    "实体列表",
    "实体",
    "结果",
)

_THINK_RE = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)

_NONE_EXACT = {
    "无",
    "没有",
    "空",
    "无实体",
    "没有实体",
    "不存在",
    "none",
    "null",
    "nil",
    "n/a",
    "na",
    "nothing",
    "empty",
    "no",
    "noentities",
    "noentity",
    "无结果",
}
_NONE_PATTERNS = (
    re.compile(r"(没有|未|无|不存在|不包含|找不到|不含)[^。.!?！？]{0,15}实体"),
    re.compile(r"\bno\b[^.!?]{0,20}\bentit(y|ies)\b"),
    re.compile(
        r"\b(did not|didn't|could not|couldn't|cannot|can't|unable to)\b[^.!?]{0,20}"
        r"\b(find|identify|extract|detect|recogni[sz]e)\b[^.!?]{0,30}\bentit(y|ies)\b"
    ),
    re.compile(r"\bnone\b[^.!?]{0,10}\b(found|identified|detected)\b"),
)
_PY_LITERAL = "Python literal syntax"
_PUNCT_STRIP = " \t\r\n。.!！?？,，;；:：\"'“”‘’`()（）[]【】<>《》-—*_~"


@dataclass(frozen=True)
class ParseResult:
    """The entities read from one model output.

    ``entities``: (label, text) pairs in order of appearance, each once. ``ok``: the output was
    understood (an explicit empty answer is ok). ``error``: why not, when ``ok`` is False.
    ``notes``: repairs applied or items skipped, for the report. ``reading``: how the output was read
    (one of READINGS; see the module docstring).
    """

    entities: list[Pair]
    ok: bool
    error: str = ""
    notes: list[str] = field(default_factory=list)
    reading: str = "unparseable"

    @property
    def is_parsed(self) -> bool:
        """Valid or repaired: counts as parsed for the strict figures and the gate."""
        return self.reading in PARSED_READINGS

    @property
    def strict_entities(self) -> list[Pair]:
        """The entities of the strict reading: none unless the output was valid or repaired."""
        return self.entities if self.is_parsed else []


class GoldFormatError(InputError, ValueError):
    """A golden-set answer is not a JSON list of {"label": str, "text": str}."""


def parse_entities(raw: str) -> ParseResult:
    """Parse one model output; never raises. See the module docstring for what is accepted."""
    if raw is None or not str(raw).strip():
        return ParseResult([], False, "empty output")
    text = _THINK_RE.sub("", str(raw)).strip()
    if not text:
        return ParseResult([], False, "empty output after removing <think> block")

    notes: list[str] = []
    errors: list[str] = []
    candidates: list[str] = []
    for match in _FENCE_RE.finditer(text):
        body = match.group(2).strip()
        if body:
            candidates.append(body)
    fenced = bool(candidates)
    candidates.append(text)

    thought = text != str(raw).strip()
    for index, cand in enumerate(candidates):
        for value, how, salvaged in _iter_json_values(cand, errors):
            pairs, err, skipped = _to_pairs(value)
            if err:
                errors.append(err)
                continue
            if fenced and index < len(candidates) - 1:
                notes.append("code fence")
            if thought:
                notes.append("<think> block dropped")
            if how:
                notes.append(how)
            if skipped:
                notes.append(f"skipped {skipped} item(s) without a label and a text")
            reading = "salvaged" if salvaged else ("repaired" if notes else "valid")
            return ParseResult(_dedup(pairs), True, "", notes, reading)

    if "{" not in text and _says_no_entities(text):
        return ParseResult([], True, "", ["no-entities phrase"], "repaired")
    if errors:
        return ParseResult([], False, errors[0], notes)
    return ParseResult([], False, "no JSON list or object found", notes)


def parse_gold(output: str) -> list[Pair]:
    """Strictly parse a golden answer (alpaca ``output``): a JSON list of {"label", "text"} strings.

    Raises GoldFormatError naming the item and field that is wrong. Duplicates collapse.
    """
    try:
        value = json.loads(output)
    except (TypeError, json.JSONDecodeError) as exc:
        raise GoldFormatError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, list):
        raise GoldFormatError(f"expected a JSON list, got {type(value).__name__}")
    pairs: list[Pair] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise GoldFormatError(f"item {i}: expected an object, got {type(item).__name__}")
        for key in ("label", "text"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise GoldFormatError(
                    f"item {i}: field {key!r} must be a non-empty string, got {item.get(key)!r}"
                )
        pairs.append((item["label"], item["text"]))
    return _dedup(pairs)


# --- finding the JSON value -------------------------------------------------------------------


def _iter_json_values(text: str, errors: list[str]) -> Iterator[tuple[Any, str, bool]]:
    """Each JSON value found in ``text`` with a note on how and whether it was salvaged (see the
    module docstring): the whole text first, then the value starting at each ``[``/``{`` in turn.
    Failures are appended to ``errors``."""
    ok, value, how = _loads_with_repairs(text.strip())
    if ok:
        yield value, how, how == _PY_LITERAL
    starts = [i for i, ch in enumerate(text) if ch in "[{"]
    invalid_until = -1  # end of the furthest bracketed chunk that is not valid JSON
    pos = 0
    for start in starts[:50]:
        if start < pos:
            continue  # inside a value already yielded
        end = _balanced_end(text, start)
        if end is None:
            # Everything after an unclosed bracket is inside it: a truncated answer is a failure,
            # not a source of partial credit.
            errors.append("unbalanced brackets (output truncated?)")
            break
        chunk = text[start : end + 1]
        ok, value, how = _loads_with_repairs(chunk)
        if not ok:
            errors.append(f"invalid JSON: {how}")
            invalid_until = max(invalid_until, end)
            continue
        inside_invalid = start < invalid_until
        pos = end + 1
        if isinstance(value, dict):
            more, pos = _following_objects(text, pos)
            if more:
                yield [value, *more], "several top-level objects read as a list", True
                continue
        note = "text around JSON ignored" if (text[:start].strip() or text[end + 1 :].strip()) else ""
        if inside_invalid:
            note = "value pulled out of invalid JSON"
        yield value, "; ".join(n for n in (note, how) if n), inside_invalid or how == _PY_LITERAL


def _following_objects(text: str, pos: int) -> tuple[list[Any], int]:
    """Objects that follow at top level, separated only by whitespace/commas (JSON lines);
    returns them and the position after the last one."""
    out: list[Any] = []
    while True:
        nxt = pos
        while nxt < len(text) and text[nxt] in " \t\r\n,":
            nxt += 1
        if nxt >= len(text) or text[nxt] != "{":
            return out, pos
        end = _balanced_end(text, nxt)
        if end is None:
            return out, pos
        ok, value, _ = _loads_with_repairs(text[nxt : end + 1])
        if not ok or not isinstance(value, dict):
            return out, pos
        out.append(value)
        pos = end + 1


def _loads_with_repairs(chunk: str) -> tuple[bool, Any, str]:
    try:
        return True, json.loads(chunk), ""
    except (json.JSONDecodeError, RecursionError) as exc:
        first = (
            f"{exc.msg} at char {exc.pos}" if isinstance(exc, json.JSONDecodeError) else "too deeply nested"
        )
    repaired = _drop_trailing_commas(chunk)
    if repaired != chunk:
        try:
            return True, json.loads(repaired), "trailing comma removed"
        except (json.JSONDecodeError, RecursionError):
            pass
    if chunk[:1] in "[{":
        try:
            return True, ast.literal_eval(chunk), _PY_LITERAL
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return False, None, first


def _balanced_end(text: str, start: int) -> int | None:
    """Index of the bracket closing the one at ``start``, skipping quoted strings; None if open."""
    stack = []
    quote = ""
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            # An apostrophe inside a word (e.g. Let's) is not a quote.
            if ch == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < len(text) and text[i + 1].isalnum():
                continue
            quote = ch
        elif ch in "[{":
            stack.append("]" if ch == "[" else "}")
        elif ch in "]}":
            if not stack or stack[-1] != ch:
                return None
            stack.pop()
            if not stack:
                return i
    return None


def _drop_trailing_commas(chunk: str) -> str:
    out = []
    quote = ""
    escaped = False
    i = 0
    n = len(chunk)
    while i < n:
        ch = chunk[i]
        if quote:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            i += 1
            continue
        if ch == '"':
            quote = ch
        elif ch == ",":
            j = i + 1
            while j < n and chunk[j] in " \t\r\n":
                j += 1
            if j < n and chunk[j] in "]}":
                i += 1
                continue
        out.append(ch)
        i += 1
    return "".join(out)


# --- shapes and items -------------------------------------------------------------------------


def _to_pairs(value: Any, depth: int = 0) -> tuple[list[Pair], str, int]:
    """(pairs, error, skipped items)."""
    if depth > 3:
        return [], "nested too deeply", 0
    if value is None:
        return [], "", 0
    if isinstance(value, str):
        inner = value.strip()
        if inner[:1] in "[{":
            ok, parsed, _ = _loads_with_repairs(inner)
            if ok:
                return _to_pairs(parsed, depth + 1)
        return [], "a JSON string, not a list of entities", 0
    if isinstance(value, dict):
        if not value:
            return [], "", 0
        lowered = {str(k).strip().lower(): v for k, v in value.items()}
        if _pick(lowered, _LABEL_KEYS) is not None:
            return _items_to_pairs([value])
        for key in _WRAPPER_KEYS:
            if key in lowered and isinstance(lowered[key], (list, dict)) and len(lowered) <= 3:
                return _to_pairs(lowered[key], depth + 1)
        if _pick(lowered, _TEXT_KEYS) is not None:
            return [], "an entity object without a label", 1
        return _label_keyed(value)
    if isinstance(value, (list, tuple)):
        return _items_to_pairs(list(value))
    return [], f"expected a list or object, got {type(value).__name__}", 0


def _items_to_pairs(items: list[Any]) -> tuple[list[Pair], str, int]:
    pairs: list[Pair] = []
    skipped = 0
    for item in items:
        got = _item_pairs(item)
        if got is None:
            skipped += 1
        else:
            pairs.extend(got)
    if items and not pairs and skipped:
        return [], f"none of {len(items)} item(s) has a label and a text", skipped
    return pairs, "", skipped


def _item_pairs(item: Any) -> list[Pair] | None:
    if isinstance(item, dict):
        lowered = {str(k).strip().lower(): v for k, v in item.items()}
        label = _scalar(_pick(lowered, _LABEL_KEYS))
        raw_text = _pick(lowered, _TEXT_KEYS)
        if label is None or raw_text is None:
            return None
        texts = raw_text if isinstance(raw_text, list) else [raw_text]
        out = [(label, t) for t in (_scalar(x) for x in texts) if t is not None]
        return out or None
    if isinstance(item, (list, tuple)) and len(item) == 2:
        label, text = _scalar(item[0]), _scalar(item[1])
        if label is None or text is None:
            return None
        return [(label, text)]
    return None


def _label_keyed(value: dict[Any, Any]) -> tuple[list[Pair], str, int]:
    """``{"name": "张三"}``, ``{"name": ["张三", "李四"]}``, ``{"name": {"张三": [[0, 1]]}}``."""
    pairs: list[Pair] = []
    for key, texts in value.items():
        label = _scalar(key)
        if label is None:
            return [], "object keys are not labels", 0
        if isinstance(texts, dict):
            texts = list(texts.keys())
        elif not isinstance(texts, list):
            texts = [texts]
        for t in texts:
            text = _scalar(t)
            if text is None:
                return [], f"object is neither an entity nor label -> texts (value {t!r})", 0
            pairs.append((label, text))
    return pairs, "", 0


def _pick(lowered: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in lowered and lowered[key] is not None:
            return lowered[key]
    return None


def _scalar(value: Any) -> str | None:
    """A non-empty stripped string from a string or number; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def _dedup(pairs: list[Pair]) -> list[Pair]:
    seen: set[Pair] = set()
    out = []
    for p in pairs:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _says_no_entities(text: str) -> bool:
    norm = text.strip().strip(_PUNCT_STRIP).lower()
    compact = re.sub(r"\s+", "", norm)
    if compact in _NONE_EXACT:
        return True
    if len(norm) > 200:
        return False
    return any(p.search(norm) for p in _NONE_PATTERNS)
