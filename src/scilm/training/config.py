"""Reading a run's settings: YAML and command-line values, type-checked against the recipe's config.

Each recipe declares its settings as a dataclass composed of the shared sections of
:mod:`scilm.training.settings`; :func:`load_config` picks the recipe (``task``), checks every value
against that dataclass's declared types with a strict schema, and refuses a setting that only
other recipes have (it would be silently ignored). :func:`all_settings` lists every setting of
every recipe for the CLI.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scilm.errors import ScilmError, name
from scilm.training.recipes.registry import RECIPES, recipe_for
from scilm.training.settings import PRECISIONS, SIFT_POLICIES, Settings, setting  # noqa: F401 (re-exported)


def _fields(config_class: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config_class) if not f.metadata.get("internal")]


@dataclass(frozen=True)
class SettingInfo:
    """One setting as the CLI shows it: its type, help, and default per task (they may differ)."""

    name: str
    type: Any
    help: str  # the first recipe's (recipes that redefine a setting may say more: ``helps``)
    defaults: dict[str, Any]  # task -> default, for the tasks that have this setting
    helps: dict[str, str]  # task -> help


def all_settings() -> list[SettingInfo]:
    """Every setting of every recipe, in declaration order (first recipe first)."""
    found: dict[str, SettingInfo] = {}
    for task, recipe in RECIPES.items():
        config = recipe.config
        hints = typing.get_type_hints(config)
        for f in _fields(config):
            default = getattr(config(), f.name) if f.name == "task" else f.default
            if f.name == "task":
                default = task if task in ("membrane", "localization") else default
            if f.name not in found:
                found[f.name] = SettingInfo(f.name, hints[f.name], f.metadata.get("help", ""), {}, {})
            found[f.name].defaults[task] = default
            found[f.name].helps[task] = f.metadata.get("help", "")
    return list(found.values())


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-4`` is a number, as in YAML 1.2 (PyYAML reads it as text)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> Any:
    """A YAML file's value (UTF-8, a byte-order mark ignored); ScilmError naming the file if unreadable."""
    from scilm.data.textio import open_text

    if not path.is_file():
        raise ScilmError(f"{path}: no such config file")
    with open_text(path) as handle:
        text = handle.read()
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ScilmError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


_EXPECTED = {bool: "true or false", int: "an integer", float: "a finite number", str: "text",
             dict: "a mapping of names to values"}


def _schema(config_class: type):
    """A strict pydantic model of ``config_class``'s fields (types from the dataclass, declared once there)."""
    from pydantic import ConfigDict, create_model

    hints = typing.get_type_hints(config_class)
    fields = {f.name: (hints[f.name], None) for f in _fields(config_class)}
    model = create_model(f"{config_class.__module__}.Schema",
                         __config__=ConfigDict(strict=True, allow_inf_nan=False, extra="forbid"), **fields)
    return model, {f.name: hints[f.name] for f in _fields(config_class)}


def _expected(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    names = [_EXPECTED.get(typing.get_origin(a) or a, str(a)) for a in args]
    return " or ".join(names) + (" (or null)" if type(None) in typing.get_args(hint) else "")


def check_types(values: dict[Any, Any], config_class: type, where: str = "") -> dict[str, Any]:
    """``values`` with each setting checked against ``config_class``'s declared type (strict: no guessing).

    A string is never read as a boolean or a number (``overwrite: 'false'`` is an error, not true),
    a float is not an integer, infinities and NaN are refused. An integer is accepted for a text
    setting (``valid_split: 4``) and converted. A setting the recipe does not have is an error,
    naming the tasks that do have it. Raises ScilmError naming the key, the expected type and the
    value given.
    """
    from pydantic import ValidationError

    schema, hints = _schema(config_class)
    bad_keys = [key for key in values if not isinstance(key, str)]
    if bad_keys:
        raise ScilmError(f"{where}setting name {bad_keys[0]!r} is not text")
    values = {key: (str(value) if isinstance(value, int) and not isinstance(value, bool)
                    and key in hints and str in typing.get_args(hints[key]) else value)
              for key, value in values.items()}
    unknown = sorted(set(values) - set(hints))
    if unknown:
        others = {info.name: info for info in all_settings()}
        elsewhere = [key for key in unknown if key in others]
        if elsewhere:
            key = elsewhere[0]
            task = values.get("task") or next(t for t, r in RECIPES.items() if r.config is config_class)
            shown = key if where else name(key)  # a YAML key as written; a command-line value as its flag
            raise ScilmError(f"{where}{shown}: not a setting of task {task!r} (it would be ignored); it belongs to "
                             f"{', '.join(others[key].defaults)}")
        raise ScilmError(f"{where}unknown setting(s): {', '.join(unknown)}")
    try:
        schema.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0])
        value = values.get(key)
        shown = f"the text {value!r}" if isinstance(value, str) else repr(value)
        raise ScilmError(f"{where}{key if where else name(key)}: expected {_expected(hints[key])}, got {shown}") \
            from None
    return values


def load_config(path: str | Path | None, overrides: dict[str, Any], task: str | None = None) -> Settings:
    """The recipe config for a YAML file (optional) with the command-line values on top, type-checked.

    The recipe is ``task`` (the pretrain command passes ``mlm``), else the ``task`` setting, else
    seq2seq for JSONL data and membrane otherwise. Raises ScilmError naming the file and key for
    unknown keys, settings of another recipe, wrong types or bad values.
    """
    values: dict[str, Any] = {}
    where = ""
    if path is not None:
        path = Path(path)
        where = f"{path}: "
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ScilmError(f"{path}: a config is a mapping of settings to values")
        values.update({key.replace("-", "_") if isinstance(key, str) else key: value for key, value in loaded.items()})
    values.update({key: value for key, value in overrides.items() if value is not None})
    if "task" in values and not isinstance(values["task"], str):
        raise ScilmError(f"{where}task: expected text, got {values['task']!r}")
    chosen = task or values.get("task")
    recipe = recipe_for(chosen if isinstance(chosen, str) else None,
                        values.get("data") if isinstance(values.get("data"), str) else None)
    if task is not None and values.get("task") not in (None, task):
        raise ScilmError(f"{where}task: {values['task']!r}, but this command trains {task}")
    values["task"] = recipe.name
    _check_data_kind(recipe.name, values.get("data"), where)
    from_file = {key for key in values if key not in overrides or overrides[key] is None}
    check_types({k: v for k, v in values.items() if k in from_file}, recipe.config, where)
    values = check_types(values, recipe.config)
    given = frozenset(values) - ({"task"} if chosen is None else set())
    return recipe.config(**values, given=given).validate()


def _check_data_kind(task: str, data: Any, where: str) -> None:
    """JSONL trains the seq2seq recipe, protein files the others: a mismatch is named, not left to a reader."""
    from scilm.data.textio import data_suffix

    if not isinstance(data, str) or not data:
        return
    jsonl = data_suffix(data) == ".jsonl"
    if jsonl != (task == "seq2seq"):
        wants = "source/target JSONL" if task == "seq2seq" else "protein FASTA or CSV/TSV"
        raise ScilmError(f"{where}{name('data')} {data}: task {task!r} trains on {wants}")


def TrainConfig(**values: Any) -> Settings:  # noqa: N802 (reads like the class it builds)
    """The recipe config for ``values`` as ``scilm train`` would build it (task from ``task`` or ``data``),
    not yet validated: ``TrainConfig(data="x.fasta", model="esm2-tiny").validate()``."""
    recipe = recipe_for(values.get("task"), values.get("data"))
    return recipe.config(**{**values, "task": recipe.name})
