"""Checks of a config's values that ``experiments.config`` applies: the type
of every field of a JSON config file, and the run's name, which names its
work directory (``runs/NAME``).

Example:
  >>> import dataclasses
  >>> from experiments import config_checks
  >>> @dataclasses.dataclass
  ... class C:
  ...   steps: int = 1
  ...   rate: float = 0.5
  >>> config_checks.typed_fields(C, {"steps": 3, "rate": 1}, "c.json")
  {'steps': 3, 'rate': 1.0}
  >>> config_checks.typed_fields(C, {"steps": "3"}, "c.json")
  Traceback (most recent call last):
  ...
  ValueError: c.json: field steps must be an int, got the str '3'
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import types
import typing
from typing import Any

__all__ = ["check_name", "typed_fields"]


def _kinds(hint) -> tuple[type, ...]:
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    return typing.get_args(hint)
  return (hint,)


def _fits(value: Any, kind: type) -> bool:
  if kind is type(None):
    return value is None
  if isinstance(value, bool):  # a bool is an int to Python, not to a config
    return kind is bool
  if kind is float:
    return isinstance(value, (int, float))
  return isinstance(value, kind)


def _article(name: str) -> str:
  return "an" if name[0] in "aeiou" else "a"


def typed_fields(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
  """``values`` checked against the annotations of the dataclass ``cls``,
  ints given for float fields made floats.

  Raises:
    ValueError: a value of another type (``"20"`` or ``true`` for an int,
      ``0.5`` for an int), naming ``where``, the field, the expected type and
      the value.
  """
  hints = typing.get_type_hints(cls)
  checked = {}
  for field in dataclasses.fields(cls):
    if field.name not in values:
      continue
    value, kinds = values[field.name], _kinds(hints[field.name])
    if not any(_fits(value, kind) for kind in kinds):
      names = [k.__name__ if k is not type(None) else "null" for k in kinds]
      expected = " or ".join(names)
      raise ValueError(
          f"{where}: field {field.name} must be {_article(expected)} "
          f"{expected}, got the {type(value).__name__} {value!r}")
    checked[field.name] = (float(value) if float in kinds
                           and not isinstance(value, float) and value is not None
                           else value)
  return checked


def check_name(name: Any) -> str:
  """``name`` if it can name a work directory under ``runs/``: a non-empty
  string that is one plain path component (no ``/`` or ``\\``, not ``.`` or
  ``..``, not absolute).

  Raises:
    ValueError: naming the problem.
  """
  problem = None
  if not isinstance(name, str) or not name.strip():
    problem = "it is empty"
  elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
    problem = "it holds a path separator"
  elif name in (".", ".."):
    problem = "it names a parent or the current directory"
  elif pathlib.PurePath(name).is_absolute() or "\0" in name:
    problem = "it is an absolute path"
  if problem:
    raise ValueError(
        f"config name {name!r} cannot name a work directory under runs/: "
        f"{problem}; use letters, digits, '-', '_' and '.' (--workdir DIR "
        "puts a run anywhere)")
  return name
