"""One loader for configuration: YAML files (`--config`, `--spec-config`) and command-line options.

Everything goes through the same pydantic models (dynaspec/config.py EngineConfig, dynaspec/spec/config.py
NGramDecodingConfig / DraftTargetDecodingConfig), so a key is accepted or refused the same way wherever it
comes from. Every failure is a ConfigError (a ValueError) whose message is one line saying where the
problem is (file, line and column for YAML syntax; the key or the command-line flag otherwise), what was
wrong, and what is allowed (for an unknown key: the allowed keys).

A spec config file holds either `speculative_config: {...}` or the speculative config's keys themselves.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

SPEC_KEY = "speculative_config"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line naming the problem."""


# ------------------------------------------------------------------------------------------ YAML
def yaml_error_line(path: Path, exc: yaml.YAMLError) -> str:
    """`path:line:column: YAML syntax error: what` from PyYAML's marks (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    context = getattr(exc, "context", None)
    what = f"{problem} ({context})" if context else problem
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return f"{where}: YAML syntax error: {what}"


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"the {type(value).__name__} {value!r}"


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds ({} for an empty file). `what` names the file in messages
    ("config", "spec config")."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} file {path} cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_line(path, exc)) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} file {path} must hold a mapping of option: value, got {_kind(data)}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{what} file {path}: option names must be strings, got the key {bad[0]!r}")
    return dict(data)


def read_spec_section(path: str | Path) -> dict[str, Any] | None:
    """The speculative config of a spec config file (None for `speculative_config: null`, which `dynaspec
    tune` writes when speculation does not pay)."""
    data = read_yaml_mapping(path, "spec config")
    if SPEC_KEY not in data:
        return data
    others = sorted(set(data) - {SPEC_KEY})
    if others:
        raise ConfigError(
            f"spec config file {path}: unknown top-level key {others[0]!r} beside {SPEC_KEY}; a spec config "
            f"file holds either `{SPEC_KEY}: {{...}}` alone or the speculative config's keys themselves"
        )
    section = data[SPEC_KEY]
    if section is not None and not isinstance(section, Mapping):
        raise ConfigError(f"{SPEC_KEY} in {path} must be a mapping with a decoding_type, got {_kind(section)}")
    return None if section is None else dict(section)


# ------------------------------------------------------------------------------------------ messages
def allowed_keys(model: type[BaseModel]) -> list[str]:
    """Field names of `model` plus their alternative names (e.g. speculative_model_dir)."""
    names: list[str] = []
    for name, field in model.model_fields.items():
        names.append(name)
        choices = getattr(field.validation_alias, "choices", None) or []
        names.extend(c for c in choices if isinstance(c, str) and c != name)
    return names


def _label(key: str, sources: Mapping[str, str], where: str) -> str:
    source = sources.get(key)
    if source is not None and source.startswith("--"):
        return source
    origin = source or where
    return f"{key} (in {origin})" if origin else key


def describe_validation_error(exc: ValidationError, model: type[BaseModel], where: str = "",
                              sources: Mapping[str, str] | None = None) -> str:
    """One line from pydantic's errors: unknown keys with the allowed ones, other errors with the key
    (or the command-line flag it came from, per `sources`) and the value given."""
    sources = sources or {}
    parts: list[str] = []
    for err in exc.errors()[:3]:
        loc = [str(p) for p in err.get("loc", ())]
        key = loc[0] if loc else ""
        if err.get("type") == "extra_forbidden":
            allowed = allowed_keys(model)
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ";"
            origin = sources.get(key) or where
            parts.append(f"unknown key {key!r}{f' in {origin}' if origin else ''}{hint} allowed keys: "
                         f"{', '.join(allowed)}")
            continue
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if not loc:
            parts.append(f"{where}: {message}" if where else message)
            continue
        name = _label(key, sources, where)
        if len(loc) > 1:
            name = f"{name} at {'.'.join(loc[1:])}"
        given = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], Mapping) else ""
        parts.append(f"{name}: {message}{given}")
    return "; ".join(parts) or "invalid configuration"


def validate_model(model: type[BaseModel], data: Mapping[str, Any], where: str = "",
                   sources: Mapping[str, str] | None = None) -> Any:
    """`model(**data)`, with any failure as one ConfigError line."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, model, where, sources)) from None


# ------------------------------------------------------------------------------------------ configs
def build_spec_config(data: Any, where: str = SPEC_KEY) -> Any:
    """NGramDecodingConfig / DraftTargetDecodingConfig from a mapping (picked by decoding_type); a config
    object passes through."""
    from dynaspec.spec.config import DECODING_TYPES, SPEC_CONFIG_CLASSES

    if isinstance(data, tuple(SPEC_CONFIG_CLASSES.values())):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping with a decoding_type ({' or '.join(DECODING_TYPES)}), "
                          f"got {_kind(data)}")
    decoding_type = data.get("decoding_type")
    if not isinstance(decoding_type, str) or decoding_type not in SPEC_CONFIG_CLASSES:
        given = "no decoding_type" if decoding_type is None else f"decoding_type {decoding_type!r}"
        raise ConfigError(f"{where} has {given}; decoding_type must be one of {', '.join(DECODING_TYPES)}")
    model = SPEC_CONFIG_CLASSES[decoding_type]
    return validate_model(model, data, f"{where} (decoding_type {decoding_type})")


def load_engine_config(
    model: str | None = None,
    config: str | Path | None = None,
    spec_config: str | Path | None = None,
    draft_len_schedule: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """The EngineConfig of a command line: `config` (engine YAML), then `spec_config` (replaces the YAML's
    speculative_config), `draft_len_schedule` (replaces the schedule), `model` and `options` (keyword
    fields, e.g. from flags; None values are ignored) on top. Flags are named `--flag-name` in messages."""
    from dynaspec.config import EngineConfig
    from dynaspec.spec.config import parse_draft_len_schedule_option

    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    spec: Any = None
    spec_where = SPEC_KEY
    if config is not None:
        data = read_yaml_mapping(config, "config")
        sources = {key: str(config) for key in data}
        spec = data.pop(SPEC_KEY, None)
        spec_where = f"{SPEC_KEY} of {config}"
    if spec_config is not None:
        spec = read_spec_section(spec_config)
        spec_where = f"{SPEC_KEY} of {spec_config}"
    overrides = {k: v for k, v in (options or {}).items() if v is not None}
    if SPEC_KEY in overrides:
        spec, spec_where = overrides.pop(SPEC_KEY), SPEC_KEY
    if draft_len_schedule is not None:
        if spec is None:
            raise ConfigError("--draft-len-schedule needs a speculative config (--spec-config or "
                              "speculative_config in --config)")
        try:
            schedule = parse_draft_len_schedule_option(draft_len_schedule)
        except ValueError as exc:
            raise ConfigError(f"--draft-len-schedule: {exc}") from None
        spec = {**(spec.model_dump() if isinstance(spec, BaseModel) else spec), "draft_len_schedule": schedule}
    if model is not None:
        overrides["model"] = model
    for key, value in overrides.items():
        data[key] = value
        sources[key] = "--" + key.replace("_", "-")
    data[SPEC_KEY] = None if spec is None else build_spec_config(spec, spec_where)
    return validate_model(EngineConfig, data, str(config) if config is not None else "", sources)
