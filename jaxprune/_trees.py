"""Which leaves of a parameter tree are prunable, and their readable paths.

A *prunable predicate* is a function ``(path, leaf) -> bool`` in the manner
of Flax's filters; ``path`` is a tuple of the dict keys, attribute names and
sequence indices that lead to the leaf, e.g. ``('Dense_0', 'kernel')``, the
same for Linen params and for Flax NNX states (no Variable suffix).

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune import _trees
  >>> params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
  >>> _trees.prunable_mask(params, None)
  {'dense': {'bias': False, 'kernel': True}}
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[Hashable, ...]
PrunablePredicate = Callable[[Path, Any], bool]


def default_prunable(path: Path, leaf: Any) -> bool:
  """Non-empty floating leaves with ``ndim >= 2``: the kernels of dense and
  conv layers."""
  del path
  return bool(
      jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
      and np.ndim(leaf) >= 2
      and np.size(leaf) > 0
  )


def _key_name(entry: Any) -> Hashable:
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return getattr(entry, attribute)
  return str(entry)


def readable_path(path: tuple[Any, ...]) -> Path:
  """Turns a JAX key path into a tuple of plain keys, names and indices.

  The ``.value`` attribute that ends the path of a leaf held in a Flax NNX
  Variable (``nnx.Param``, or the ``OptVariable`` of an ``nnx.Optimizer``
  state) is dropped, so a prunable predicate sees the same path for a Linen
  params dict and for ``nnx.state(model, nnx.Param)``:
  ``('Dense_0', 'kernel')``, ``('layers', 0, 'kernel')``.
  """
  if (path and isinstance(path[-1], jax.tree_util.GetAttrKey)
      and path[-1].name == "value"):
    path = path[:-1]
  return tuple(_key_name(entry) for entry in path)


def path_string(path: Path) -> str:
  """``('Dense_0', 'kernel')`` -> ``'Dense_0/kernel'``, for messages."""
  return "/".join(str(p) for p in path) or "<root>"


def _is_bool(flag: Any) -> bool:
  """Whether ``flag`` is a Python or numpy bool, or a 0-d boolean array."""
  if isinstance(flag, (bool, np.bool_)):
    return True
  return getattr(flag, "dtype", None) == np.bool_ and np.shape(flag) == ()


def prunable_mask(params: Any, prunable: PrunablePredicate | None) -> Any:
  """A tree of Python bools: which leaves of ``params`` are prunable.

  Raises:
    TypeError: if the predicate returns something else than a bool for a
      leaf (``None``, an array of flags...), naming the leaf.
  """
  predicate = default_prunable if prunable is None else prunable

  def decide(path, leaf):
    path = readable_path(path)
    flag = predicate(path, leaf)
    if not _is_bool(flag):
      got = (f"an array of shape {np.shape(flag)}" if np.ndim(flag)
             else repr(flag))
      raise TypeError(
          f"the prunable predicate returned {got} for leaf "
          f"{path_string(path)}; it must return True or False"
      )
    return bool(flag)

  return jax.tree_util.tree_map_with_path(decide, params)


def selected_leaves(
    params: Any, prunable: PrunablePredicate | None, caller: str, verb: str
) -> tuple[Any, list[tuple[Path, Any]]]:
  """The flags of ``prunable`` and the selected leaves, checked.

  Args:
    params: the parameter tree.
    prunable: the predicate, or ``None`` for :func:`default_prunable`.
    caller: the function's name, for messages (``"jaxprune.prune"``).
    verb: what is done to the leaves, for messages (``"pruned"``).

  Raises:
    ValueError: if the predicate selects no leaf, or an empty leaf.
    TypeError: if a selected leaf is not floating-point.
  """
  flags = prunable_mask(params, prunable)
  leaves = leaves_with_paths(params)
  selected = [
      (path, leaf)
      for (path, leaf), flag in zip(leaves, jax.tree.leaves(flags))
      if flag
  ]
  if not selected:
    raise ValueError(
        f"{caller}: the prunable predicate selects no leaf of the params, so "
        f"nothing would be {verb}; leaves: {[path_string(p) for p, _ in leaves]}"
    )
  for path, leaf in selected:
    if np.size(leaf) == 0:
      raise ValueError(
          f"{caller}: leaf {path_string(path)} is empty (shape "
          f"{np.shape(leaf)}), so nothing in it can be {verb}; leave it out "
          "of the prunable predicate"
      )
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{caller}: leaf {path_string(path)} has dtype {dtype}; only real "
          f"floating-point leaves can be {verb}"
      )
  return flags, selected


def check_differentiable(params: Any, caller: str, real: bool = False) -> None:
  """Raises ``TypeError`` naming the first leaf ``jax.grad`` cannot take.

  For the functions that differentiate a loss with respect to the whole
  params tree, where JAX's own error names neither the leaf nor the caller.

  Args:
    params: the parameter tree.
    caller: the function's name, for messages (``"jaxprune.snip"``).
    real: also refuse complex leaves.
  """
  kind = jnp.floating if real else jnp.inexact
  for path, leaf in leaves_with_paths(params):
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, kind):
      raise TypeError(
          f"{caller}: leaf {path_string(path)} has dtype {dtype}; every leaf "
          "of the params is differentiated, so every leaf must be "
          f"{'real ' if real else ''}floating-point (keep integer state out "
          "of the params, e.g. closed over by the loss or apply function)"
      )


def leaves_with_paths(tree: Any) -> list[tuple[Path, Any]]:
  """The leaves of ``tree`` with their readable paths, in tree order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(readable_path(path), leaf) for path, leaf in flat]


def check_same_structure(expected: Any, actual: Any, what: str) -> None:
  """Raises ``ValueError`` naming ``what`` if the two trees differ in structure."""
  expected_def = jax.tree.structure(expected)
  actual_def = jax.tree.structure(actual)
  if expected_def != actual_def:
    raise ValueError(
        f"the structure of {what} is not that of the params.\n"
        f"  expected: {expected_def}\n  got:      {actual_def}"
    )


def check_same_shapes(params: Any, tree: Any, what: str) -> None:
  """Raises ``ValueError`` naming ``what`` and the leaf unless ``tree`` has
  the structure of ``params`` and the same shape at every leaf."""
  check_same_structure(params, tree, what)
  for (path, p), leaf in zip(leaves_with_paths(params), jax.tree.leaves(tree)):
    if np.shape(leaf) != np.shape(p):
      raise ValueError(
          f"the shape of {what} at {path_string(path)} is {np.shape(leaf)}, "
          f"but the param's is {np.shape(p)}"
      )


def check_state_type(state: Any, state_type: type, caller: str) -> None:
  """Raises ``TypeError`` unless ``state`` is a ``state_type``: the state
  given to ``update`` must be the one this transformation's ``init`` made."""
  if not isinstance(state, state_type):
    raise TypeError(
        f"{caller}: update got a state of type {type(state).__name__}, not "
        f"the {state_type.__name__} that this transformation's init makes"
    )
