"""Composing a typed config of any schema: defaults, a YAML file with its ``_base_``, overrides.

The detector's config (``detectron_res.config``) and the classifier's
(``detectron_res.classification.config``) are loaded through here, each with its own
schema dataclass; each checks its own choices and ranges afterwards. Every mistake
(unknown key, wrong type, missing ``_base_`` file, malformed YAML) raises
:class:`ConfigError` with one line naming the file or override, the full dotted key,
what was expected and, for an unknown key, the closest valid one.

A ``section.key=value`` override is parsed as bounded YAML (``input.min_size_train=[480,600]``)
and merged through the schema, the same way on the command line
(:func:`compose_config`) and on an already loaded config (:func:`override_config`).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .bounded_io import CONFIG_LIMITS, BoundedInputError, check_structure, load_yaml_file, load_yaml_text

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"


class ConfigError(ValueError):
    """A mistake in a config file or override; the message is one line."""



def resolve_config_path(path_or_name: str | os.PathLike) -> Path:
    """Find a config by path, or by bare name under ``configs/``.

    ``coco_r101.yaml`` and ``coco_r101`` both find ``configs/coco_r101.yaml``.
    """
    text = str(path_or_name)
    candidates = [Path(text)]
    for root in (Path.cwd() / "configs", CONFIG_DIR):
        candidates += [root / text, root / f"{text}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    available = sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    hint = difflib.get_close_matches(Path(text).name, available, n=1)
    suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
    raise ConfigError(f"config file '{text}' not found (looked in ./, ./configs/ and {CONFIG_DIR}){suggestion}")


def _read_yaml(path: Path) -> dict:
    """A config file's top-level mapping, read within :data:`bounded_io.CONFIG_LIMITS`
    (size, UTF-8, nesting depth, YAML alias expansion: a few KB of nested aliases
    would otherwise keep the merge below busy for hours)."""
    try:
        data = load_yaml_file(path, CONFIG_LIMITS)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    except BoundedInputError as e:
        raise ConfigError(str(e)) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level, got {type(data).__name__}")
    return data


def _all_keys(schema_type: type, prefix: str = "") -> List[str]:
    """Every valid dotted key of a schema dataclass (leaves and sections)."""
    keys = []
    hints = typing.get_type_hints(schema_type)
    for f in dataclasses.fields(schema_type):
        dotted = f"{prefix}{f.name}"
        keys.append(dotted)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], dotted + ".")
    return keys


def _annotation_at(schema: type, full_key: str) -> Any:
    """The schema's type annotation for a dotted key; None where the key is not in it.

    ``Dict[str, X]`` fields (``data.datasets``) accept any name as the next part,
    with ``X``'s fields below it.
    """
    annotation: Any = schema
    for part in full_key.split("."):
        if dataclasses.is_dataclass(annotation):
            hints = typing.get_type_hints(annotation)
            if part not in hints:
                return None
            annotation = hints[part]
        elif typing.get_origin(annotation) in (dict, Dict):
            annotation = typing.get_args(annotation)[1]
        elif typing.get_origin(annotation) in (list, List):
            annotation = typing.get_args(annotation)[0]
        else:
            return None
    return annotation


def _expected_type(schema: type, full_key: str) -> str:
    """The schema's type for a dotted key, as text ("int", "List[int]")."""
    annotation = _annotation_at(schema, full_key)
    if annotation is None:
        return "?"
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    return text or str(annotation).replace("typing.", "")


def _suggest(schema: type, full_key: str) -> str:
    """'; closest valid key: ...' for an unknown dotted key, or '' when nothing is close."""
    parts = full_key.split(".")
    # Below a Dict[str, dataclass] field (data.datasets.<any name>.<field>), suggest
    # among that dataclass's fields, keeping the user's entry name.
    for i in range(1, len(parts) - 1):
        annotation = _annotation_at(schema, ".".join(parts[:i]))
        if typing.get_origin(annotation) in (dict, Dict):
            value_type = typing.get_args(annotation)[1]
            if dataclasses.is_dataclass(value_type) and len(parts) > i + 1:
                close = difflib.get_close_matches(parts[i + 1], _all_keys(value_type), n=1)
                return f"; closest valid key: '{'.'.join(parts[: i + 1] + close)}'" if close else ""
    close = difflib.get_close_matches(full_key, _all_keys(schema), n=1, cutoff=0.6)
    return f"; closest valid key: '{close[0]}'" if close else ""


def _merge(base: DictConfig, update: Any, source: str, schema: type, user_key: Optional[str] = None) -> DictConfig:
    """``OmegaConf.merge`` that turns OmegaConf's errors into one-line ConfigErrors."""
    try:
        return OmegaConf.merge(base, update)
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e)
        if user_key and user_key.startswith(key):
            key = user_key  # name the whole path the user typed, not just its first unknown part
        raise ConfigError(f"{source}: unknown config key '{key}'{_suggest(schema, key)}") from None
    except ValidationError as e:
        key = getattr(e, "full_key", None) or "?"
        value = getattr(e, "value", None)
        if hasattr(value, "_value"):  # an OmegaConf node wrapping the raw value
            value = value._value()
        got = f"{value!r} ({type(value).__name__})" if value is not None else str(e).splitlines()[0]
        raise ConfigError(f"{source}: config key '{key}' expects {_expected_type(schema, key)}, got {got}") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{source}: invalid value for config key '{key}': {str(e).splitlines()[0]}") from None



def _parse_overrides(overrides: Sequence[str]) -> List[tuple]:
    """``(dotted key, value, text)`` of each ``key=value``; values parsed as bounded YAML."""
    parsed = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"command-line override '{item}': expected section.key=value")
        key, text = item.split("=", 1)
        source = f"command-line override '{_shorten(item)}'"
        if key.count(".") >= CONFIG_LIMITS.max_depth:
            raise ConfigError(
                f"{source}: key has {key.count('.') + 1} parts, more than the {CONFIG_LIMITS.max_depth} "
                "levels a config has"
            )
        try:
            value = load_yaml_text(text, CONFIG_LIMITS, source) if text.strip() else ""
        except BoundedInputError as e:
            raise ConfigError(str(e)) from None
        except yaml.YAMLError:
            value = text  # not YAML: keep the raw string, the schema decides
        parsed.append((key.strip(), value, item))
    return parsed


def _shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for a one-line message."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def compose_config(
    schema: type,
    path_or_name: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> DictConfig:
    """Any schema's config: its defaults, then a YAML file (with its ``_base_``), then overrides.

    The detector (:func:`load_config`) and the classifier
    (``detectron_res.classification.config``) share this loader with their own
    schema dataclass; each checks its own choices and ranges afterwards.
    """
    cfg = OmegaConf.structured(schema)
    if path_or_name is not None:
        path = resolve_config_path(path_or_name)
        data = _read_yaml(path)
        base_name = data.pop("_base_", None)
        if base_name is not None:
            if not isinstance(base_name, str):
                raise ConfigError(f"{path}: '_base_' must be a file name, got {base_name!r}")
            base_path = path.parent / base_name
            if not base_path.is_file():
                raise ConfigError(f"{path}: _base_ file '{base_name}' not found (looked for {base_path})")
            base_data = _read_yaml(base_path)
            if "_base_" in base_data:
                raise ConfigError(
                    f"{base_path}: a _base_ file may not have its own _base_ (one level of inheritance only)"
                )
            cfg = _merge(cfg, base_data, str(base_path), schema)
        cfg = _merge(cfg, data, str(path), schema)
    return override_config(schema, cfg, overrides)


def override_config(schema: type, cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``cfg`` (a config of ``schema``) with ``section.key=value`` overrides merged in, in order.

    A config not built from ``schema`` (plain containers, ``OmegaConf.create``) is first
    merged onto the schema's defaults, so that every key and type is checked. Returns a
    new config; ``cfg`` is left as it is. Errors name the override as on the command line.
    """
    if OmegaConf.get_type(cfg) is not schema:
        cfg = _merge(OmegaConf.structured(schema), cfg, "the given config", schema)
    elif not overrides:
        return copy.deepcopy(cfg)  # a new config all the same: the caller may change it
    for key, value, text in _parse_overrides(overrides):
        update = OmegaConf.create()
        try:
            OmegaConf.update(update, key, value, force_add=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"command-line override '{_shorten(text)}': {str(e).splitlines()[0]}") from None
        cfg = _merge(cfg, update, f"command-line override '{_shorten(text)}'", schema, user_key=key)
    return cfg


def compose_config_from_dict(schema: type, data: dict, source: str = "checkpoint") -> DictConfig:
    """A typed config of ``schema`` from plain containers (a checkpoint's saved config).

    The containers come from a file (a pickle may share one list many times over, as
    YAML aliases do): they are bounded like a config file before OmegaConf copies them.
    """
    try:
        check_structure(data, CONFIG_LIMITS, source)
    except BoundedInputError as e:
        raise ConfigError(str(e)) from None
    return _merge(OmegaConf.structured(schema), data, source, schema)
