"""The reward terms of a user's posterior, as written in YAML (a list of mappings) and checked before any model
loads: log R(Z | X) = sum over terms of weight x term(Z, X).

    - lm: {context: "{X}", text: "{Z}."}      log p_LM(text | context); Z inside one of them
      model: base                               the base model (adapter off), or a local folder / .gguf file
      renormalize: false                        renormalize the LM over the tokens the policy may write
    - function: my_rules:score                 fn(texts, inputs) -> one log-reward per text (module:function)
    - contains: "{keyword}"                     constraints on Z's text: contains / not_contains (templates over
    - not_contains: "I"                         the input columns) / regex (Python re.search); hard: a violation
    - regex: "^ [A-Z]"                          has reward 0 (log -inf); soft (hard: false): costs ``weight``
      hard: true
"""

from __future__ import annotations

import importlib
import math
import re
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gfnlm.infra.errors import GfnlmError

KINDS = ("lm", "function", "contains", "not_contains", "regex")
CONSTRAINTS = ("contains", "not_contains", "regex")
LATENT = "Z"  # the template field that stands for the sampled text
COMMON_KEYS = {"weight", "name"}
KIND_KEYS = {"lm": {"model", "renormalize"}, "function": set(), "contains": {"hard", "case_sensitive"},
             "not_contains": {"hard", "case_sensitive"}, "regex": {"hard"}}


@dataclass(frozen=True)
class Term:
    kind: str
    name: str  # how errors and tables name the term: "term 2 (function rules:score)"
    weight: float
    context: str = ""  # lm
    text: str = ""  # lm: the scored text; constraints: the string or pattern
    model: str = "base"  # lm
    renormalize: bool = False  # lm
    function: str = ""  # function: module:function, or the name of a function given from Python
    hard: bool = True  # constraints
    case_sensitive: bool = True  # contains / not_contains

    @property
    def is_hard_constraint(self) -> bool:
        return self.kind in CONSTRAINTS and self.hard


def template_fields(template: str, where: str) -> list[str]:
    """The column names a ``{column}`` template reads (``{{`` is a literal brace)."""
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise GfnlmError(f"{where}: template {template!r} is malformed ({exc}); write {{column}}, and {{{{ for a "
                         "literal brace.") from None
    for f in fields:
        if not f.isidentifier():
            raise GfnlmError(f"{where}: template {template!r} has the field {{{f}}}; fields name columns, such as "
                             "{X}.")
    return fields


def parse_terms(entries: list, where: str = "task.reward") -> list[Term]:
    """The terms of a YAML reward list, or one clear error naming the term."""
    if not isinstance(entries, list) or not entries:
        raise GfnlmError(f"{where} must be a list of reward terms (lm, function, contains, not_contains, regex).")
    return [parse_term(entry, f"{where}[{i + 1}]") for i, entry in enumerate(entries)]


def parse_term(entry, where: str) -> Term:
    if not isinstance(entry, dict):
        raise GfnlmError(f"{where} must be a mapping such as {{function: module:function, weight: 1.0}}.")
    kinds = [k for k in KINDS if k in entry]
    if len(kinds) != 1:
        raise GfnlmError(f"{where} needs exactly one of {', '.join(KINDS)} (got {', '.join(map(str, entry))}).")
    kind = kinds[0]
    unknown = set(entry) - {kind} - COMMON_KEYS - KIND_KEYS[kind]
    if unknown:
        known = ", ".join(sorted(COMMON_KEYS | KIND_KEYS[kind]))
        raise GfnlmError(f"{where} ({kind}): unknown key {sorted(unknown)[0]!r}; a {kind} term takes {known}.")
    value = entry[kind]
    label = f"{kind} {value}" if kind == "function" else kind
    name = str(entry.get("name") or f"term {where.rsplit('[', 1)[-1].rstrip(']')} ({label})")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise GfnlmError(f"{where} ({label}): weight must be a finite number (got {weight!r}).")
    options = {k: entry[k] for k in KIND_KEYS[kind] if k in entry}
    for flag in ("renormalize", "hard", "case_sensitive"):
        if flag in options and not isinstance(options[flag], bool):
            raise GfnlmError(f"{where} ({label}): {flag} must be true or false (got {options[flag]!r}).")
    term = Term(kind, name, float(weight), **options)
    if kind == "lm":
        return _lm_term(term, value, where)
    if not isinstance(value, str) or not value:
        raise GfnlmError(f"{where} ({kind}): give a non-empty string (got {value!r}).")
    if kind == "function":
        return replace(term, function=value)
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            raise GfnlmError(f"{where} (regex): {value!r} is not a regular expression ({exc}).") from None
    else:
        template_fields(value, where)
    return replace(term, text=value)


def _lm_term(term: Term, value, where: str) -> Term:
    if not isinstance(value, dict) or set(value) - {"context", "text"} or "text" not in value:
        raise GfnlmError(f"{where} (lm): write lm: {{context: \"{{X}}\", text: \"{{Z}}.\"}} (the text is scored "
                         "after the context; Z appears in one of them).")
    context, text = str(value.get("context", "")), str(value["text"])
    count = template_fields(context, where).count(LATENT) + template_fields(text, where).count(LATENT)
    if count != 1:
        raise GfnlmError(f"{where} (lm): {{{LATENT}}} must appear exactly once in context + text (found {count}).")
    if not isinstance(term.model, str) or not term.model:
        raise GfnlmError(f"{where} (lm): model is 'base' or a local model folder / .gguf file.")
    return replace(term, context=context, text=text)


def columns_read(term: Term) -> set[str]:
    """The input columns a term's templates read."""
    if term.kind == "lm":
        return (set(template_fields(term.context, term.name)) | set(template_fields(term.text, term.name))) - {LATENT}
    if term.kind in ("contains", "not_contains"):
        return set(template_fields(term.text, term.name))
    return set()


def import_function(path: str, base_dir: str | Path, where: str) -> Callable:
    """``module:function``, importable from ``base_dir`` (the config file's folder) or the Python path."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise GfnlmError(f"{where}: function {path!r} must be written module:function (e.g. my_rules:score); a "
                         "function given from Python is passed again by name: gfnlm.load(run, functions={...}).")
    folder = str(Path(base_dir).resolve()) if base_dir else None
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error the module raises while it loads
        raise GfnlmError(f"{where}: cannot import {module_name!r} ({type(exc).__name__}: {exc}); the module is "
                         f"looked for in {folder or 'the current folder'} and on the Python path.") from None
    fn = module
    for part in attribute.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise GfnlmError(f"{where}: {module_name} has no function {attribute!r}.")
    return fn


def constraint_function(term: Term) -> Callable[[list[str], list[dict]], list[float]]:
    """The constraint as a text function: 0 where it holds, else -inf (hard) or -1 (soft, times the weight)."""
    miss = -math.inf if term.hard else -1.0
    if term.kind == "regex":
        pattern = re.compile(term.text)
        holds = lambda text, row: pattern.search(text) is not None  # noqa: E731
    else:
        fold = (lambda s: s) if term.case_sensitive else str.casefold
        wanted = term.kind == "contains"
        holds = lambda text, row: (fold(term.text.format_map(row)) in fold(text)) == wanted  # noqa: E731
    return lambda texts, rows: [0.0 if holds(t, r) else miss for t, r in zip(texts, rows)]
