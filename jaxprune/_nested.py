"""Params as nested dicts: their leaves with paths, paired with masks, and back.

The export functions take the trees users hold: Linen params and the plain
form of a Flax NNX state (``nnx.to_pure_dict(nnx.state(model, nnx.Param))``)
are nested dicts (any ``Mapping``) whose keys are strings, or integers for
the entries of an NNX list.  A tree's *skeleton* is the same nesting with
every leaf replaced by its index in the leaf list, which is all it takes to
build the tree again, and which :func:`to_json` writes as JSON.

Example:
  >>> import numpy as np
  >>> from jaxprune import _nested
  >>> params = {'layers': {0: {'kernel': np.ones((2, 3))}}, 'out': np.ones(3)}
  >>> skeleton, leaves = _nested.flatten(params, "f")
  >>> skeleton, [path for path, _ in leaves]
  ({'layers': {0: {'kernel': 0}}, 'out': 1}, [('layers', 0, 'kernel'), ('out',)])
  >>> _nested.from_json(_nested.to_json(skeleton)) == skeleton
  True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxprune import _nnx
from jaxprune import _trees

Key = str | int
Path = tuple[Key, ...]

_SUPPORTED = ("nested dicts with str or int keys and array leaves (Linen params, "
              "or nnx.to_pure_dict(nnx.state(model, nnx.Param)) for Flax NNX)")


def _is_key(key: Any) -> bool:
  return isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool))


def _is_array(leaf: Any) -> bool:
  return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def _sorted(node: Mapping) -> list[Key]:
  """The keys in JAX's order for a dict of one key type: integers, then
  strings, each sorted."""
  return sorted(node, key=lambda key: (isinstance(key, str), key))


def flatten(tree: Any, caller: str, what: str = "the params"
            ) -> tuple[Any, list[tuple[Path, Any]]]:
  """The skeleton of ``tree`` and its leaves with their paths, keys sorted
  (integers before strings), which is JAX's leaf order for dicts.

  Raises:
    TypeError: naming ``caller`` and the place, for a container that is not
      a mapping, a key that is neither str nor int, or a leaf that is not an
      array.
  """
  leaves: list[tuple[Path, Any]] = []

  def walk(node, path):
    if isinstance(node, Mapping):
      for key in node:
        if not _is_key(key):
          raise TypeError(
              f"{caller}: {what} at {_trees.path_string(path)} have the key "
              f"{key!r} of type {type(key).__name__}; supported are "
              f"{_SUPPORTED}")
      return {key: walk(node[key], path + (key,)) for key in _sorted(node)}
    if not _is_array(node):
      kind = type(node).__name__
      fix = (" (convert it to a dict keyed by index)"
             if isinstance(node, (list, tuple)) else "")
      raise TypeError(
          f"{caller}: {what} hold a {kind} at {_trees.path_string(path)}"
          f"{fix}; supported are {_SUPPORTED}")
    leaves.append((path, node))
    return len(leaves) - 1

  return walk(_nnx.plain(tree), ()), leaves


def unflatten(skeleton: Any, leaves: Sequence[Any]) -> Any:
  """The tree of ``skeleton`` with leaf ``i`` at index ``i``."""
  if isinstance(skeleton, Mapping):
    return {key: unflatten(value, leaves) for key, value in skeleton.items()}
  return leaves[skeleton]


def paired(params: Any, masks: Any, caller: str
           ) -> tuple[Any, list[tuple[Path, Any, np.ndarray | None]]]:
  """The skeleton of ``params`` and, per leaf, its path, value and mask.

  ``masks`` has the nesting of ``params``, with a boolean array of the
  leaf's shape (True = kept) or ``None`` at each leaf; ``None`` in place of
  a whole sub-dict leaves every leaf under it unmasked.  Masks come back as
  numpy arrays.

  Raises:
    ValueError: naming ``caller`` and the leaf, where the masks lack a key
      of the params or have one the params lack, or a mask's shape differs.
    TypeError: for a mask that is not boolean, or a tree of another kind.
  """
  skeleton, leaves = flatten(params, caller)
  masks = _nnx.plain(masks)
  out = []
  for path, leaf in leaves:
    node = masks
    for depth, key in enumerate(path):
      if node is None:
        break
      if not isinstance(node, Mapping):
        raise ValueError(
            f"{caller}: the masks hold a {type(node).__name__} at "
            f"{_trees.path_string(path[:depth])}, where the params have a "
            f"dict; masks have the nesting of the params")
      if key not in node:
        raise ValueError(
            f"{caller}: the masks have no entry for "
            f"{_trees.path_string(path)}; give None for a leaf that is not "
            "pruned")
      node = node[key]
    mask = None if node is None else _checked_mask(node, leaf, path, caller)
    out.append((path, leaf, mask))
  _check_no_extra(masks, skeleton, (), caller)
  return skeleton, out


def _checked_mask(mask: Any, leaf: Any, path: Path, caller: str) -> np.ndarray:
  where = _trees.path_string(path)
  if isinstance(mask, Mapping) or not _is_array(mask):
    raise ValueError(
        f"{caller}: the masks hold a {type(mask).__name__} at {where}, where "
        "the params have an array; give a boolean array of its shape or None")
  if np.dtype(mask.dtype) != np.bool_:
    raise TypeError(
        f"{caller}: the mask of {where} has dtype {mask.dtype}; masks are "
        "boolean (True = kept)")
  if tuple(mask.shape) != tuple(leaf.shape):
    raise ValueError(
        f"{caller}: the mask of {where} has shape {tuple(mask.shape)} but the "
        f"param has shape {tuple(leaf.shape)}")
  return np.asarray(mask)


def _check_no_extra(masks: Any, skeleton: Any, path: Path, caller: str) -> None:
  if not isinstance(masks, Mapping) or not isinstance(skeleton, Mapping):
    return
  for key in masks:
    if key not in skeleton:
      raise ValueError(
          f"{caller}: the masks have {_trees.path_string(path + (key,))}, "
          "which the params lack")
    _check_no_extra(masks[key], skeleton[key], path + (key,), caller)


def to_json(skeleton: Any) -> Any:
  """``skeleton`` in a JSON-able form: a dict becomes a list of
  ``[key, node]`` pairs (JSON objects only have string keys), a leaf stays
  its index."""
  if isinstance(skeleton, Mapping):
    return [[key, to_json(value)] for key, value in skeleton.items()]
  return skeleton


def from_json(node: Any) -> Any:
  """The skeleton that :func:`to_json` wrote.

  Raises:
    ValueError: for anything :func:`to_json` does not write.
  """
  if isinstance(node, list):
    if not all(isinstance(pair, list) and len(pair) == 2 and _is_key(pair[0])
               for pair in node):
      raise ValueError(f"not a skeleton node: {json.dumps(node)[:80]}")
    return {key: from_json(value) for key, value in node}
  if isinstance(node, int) and not isinstance(node, bool):
    return node
  raise ValueError(f"not a skeleton node: {json.dumps(node)[:80]}")
