"""What the job and the service spec share on their way from text to a validated model:
YAML/JSON parsing that refuses duplicate keys, ``--set key=value`` overrides, and pydantic
errors turned into one readable line each. Pure (text and dicts in, values or errors out);
reading the file is the shell's (``fuxi.io.specfile``).
"""

from __future__ import annotations

import difflib
import json
import typing
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fuxi.errors import BadInput, SpecError

__all__ = [
    "GENERIC_EXPECTATIONS",
    "Problems",
    "SpecLoader",
    "apply_override",
    "apply_overrides",
    "fspath_of",
    "humane_errors",
    "join_path",
    "lower_first",
    "model_at",
    "parse_text",
]


def fspath_of(value: Any) -> Any:
    """A path-like object (``pathlib.Path``) as its string, anything else as it is (what
    ``os.fspath`` does, without importing ``os`` into a core)."""
    fspath = getattr(type(value), "__fspath__", None)
    return fspath(value) if fspath is not None else value


class Problems(ValueError):
    """Several problems found by one validator. Each is ``(relative field path, message)``.

    Carried inside pydantic's ``value_error`` so the converter can emit one line per problem
    with its own field path, instead of one blob per validator.
    """

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in problems))


def join_path(*parts: str | int) -> str:
    out = ""
    for part in parts:
        if part == "":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


# ---- parsing text (the shell reads the file) ----


class SpecLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and keeps timestamps as strings.

    A duplicate task name would otherwise silently replace the first task, and dates are not
    JSON-like, so ``date: 2024-01-01`` stays the string a user would expect in a param.
    """


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: SpecLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"found duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_text(text: str, suffix: str, source: str) -> Any:
    if suffix == ".json":
        def no_duplicates(pairs):
            keys = [k for k, _ in pairs]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise ValueError(f"duplicate keys {dupes}")
            return dict(pairs)
        try:
            return json.loads(text, object_pairs_hook=no_duplicates)
        except json.JSONDecodeError as exc:
            raise SpecError([f"{source}: line {exc.lineno} column {exc.colno}: {exc.msg}"], source=source) from exc
        except ValueError as exc:
            raise SpecError([f"{source}: {exc}"], source=source) from exc
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{what} ({context})" if context else what
        raise SpecError([f"{source}: {where}invalid YAML: {detail}"], source=source) from exc


# ---- overrides ----


def apply_overrides(doc: dict, overrides: Sequence[str],
                    bare_key_root: str | None = "params") -> None:
    """Apply ``--set key=value`` overrides to ``doc`` in place; every bad one is reported at
    once as one ``BadInput``."""
    if isinstance(overrides, str):  # a lone string would otherwise be read character by character
        overrides = [overrides]
    problems = []
    for override in overrides:
        problem = apply_override(doc, override, bare_key_root)
        if problem:
            example = ("input=data/*.txt or tasks.map.instances=8" if bare_key_root
                       else "replicas=3 or health_check.period_s=5")
            problems.append(f"override {override!r}: {problem}; expected the form key=value "
                            f"(e.g. {example})")
    if problems:
        raise BadInput("\n".join(problems))


def apply_override(doc: dict, override: Any, bare_key_root: str | None = "params") -> str | None:
    """Apply one ``key=value``; return what is wrong with it, or None. A key without dots
    goes under ``bare_key_root`` (job specs: ``params``), or at the top when it is None."""
    if not isinstance(override, str) or "=" not in override:
        return "no '='"
    key, text = override.split("=", 1)
    key = key.strip()
    if not key:
        return "empty key"
    parts = key.split(".") if "." in key or bare_key_root is None else [bare_key_root, key]
    if any(not part for part in parts):
        return f"empty path segment in {key!r}"
    if text.strip() == "":
        value: Any = ""  # `--set output=` means an empty string, not YAML's null
    else:
        try:
            value = yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
        except yaml.YAMLError as exc:
            return f"value {text!r} is not valid YAML ({getattr(exc, 'problem', None) or exc})"
    node: Any = doc
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return (f"{'.'.join(parts[:i + 1])} is {type(child).__name__} {child!r}, not a mapping, "
                    "so the key cannot go through it")
        node = child
    node[parts[-1]] = value
    return None


# ---- pydantic errors -> one readable line each ----

GENERIC_EXPECTATIONS: dict[str, str] = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping",
}


def model_at(loc: tuple, root: type[BaseModel]
             ) -> tuple[type[BaseModel] | None, str | None, tuple]:
    """Walk an error location from ``root`` (e.g. JobSpec) down to (innermost model, its
    field, rest of loc)."""
    model: type[BaseModel] = root
    i = 0
    while i < len(loc):
        field = loc[i]
        info = model.model_fields.get(field) if isinstance(field, str) else None
        if info is None:
            return model, None, loc[i:]
        annotation = info.annotation
        optional = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(optional) == 1 and type(None) in typing.get_args(annotation):
            annotation = optional[0]  # ``Model | None``: errors inside are the model's
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and i + 1 < len(loc):
            model, i = annotation, i + 1
            continue
        args = typing.get_args(annotation)
        if (typing.get_origin(annotation) is dict and len(args) == 2 and isinstance(args[1], type)
                and issubclass(args[1], BaseModel) and i + 2 < len(loc)):
            model, i = args[1], i + 2
            continue
        return model, field, loc[i + 1:]
    return model, None, ()


def humane_errors(exc: ValidationError, root: type[BaseModel],
                  expected_by_field: Mapping[tuple[str, str], str] = MappingProxyType({})
                  ) -> list[str]:
    """One readable line per pydantic error: the field's path, what was given and what was
    expected (``expected_by_field``: (model name, field) -> text; else a generic phrase)."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = join_path(*loc)
        kind = err["type"]
        error = (err.get("ctx") or {}).get("error")
        if kind == "value_error" and isinstance(error, Problems):
            for rel, message in error.problems:
                full = (f"{path}{rel}" if rel.startswith("[") else join_path(path, rel)) if rel else path
                lines.append(f"{full}: {message}" if full else message)
            continue
        if kind == "value_error" and error is not None:
            lines.append(f"{path}: {error}")
            continue
        model, field, rest = model_at(loc, root)
        if kind == "extra_forbidden":
            allowed = [info.alias or name for name, info in model.model_fields.items()] \
                if model else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            lines.append(f"{path}: unknown field{suffix}; expected one of: {', '.join(allowed)}")
        elif kind == "missing":
            lines.append(f"{path}: required field is missing")
        else:
            expected = expected_by_field.get((model.__name__, field)) if model and field and not rest else None
            if expected is None:
                expected = GENERIC_EXPECTATIONS.get(kind) or lower_first(err["msg"])
            lines.append(f"{path}: got {err['input']!r}, expected {expected}")
    return lines


def lower_first(text: str) -> str:
    text = text.removeprefix("Input should be ").removeprefix("Value error, ")
    return text[:1].lower() + text[1:]
