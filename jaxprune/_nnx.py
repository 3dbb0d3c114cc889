"""Flax NNX trees at the library's boundaries: plain forms and conforming.

Inside a transformation, params and masks keep whatever structure the
optimizer hands over: under ``nnx.Optimizer`` that is an ``nnx.State`` whose
leaves sit inside ``nnx.Param`` (or ``OptVariable``) nodes.  What a user
reads and passes in is the *plain form*: nested dicts of arrays (``None``
for unpruned leaves), as ``nnx.state(model, nnx.Param).to_pure_dict()``
gives.  This module converts between the two, matching leaves by their
readable path (``('layers', 0, 'kernel')``), which is the same with or
without the Variable nodes.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from jaxprune import _nnx
  >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  >>> masks = _nnx.plain(model)
  >>> sorted(masks), masks['kernel'].shape
  (['bias', 'kernel'], (3, 2))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from jaxprune import _trees


def is_variable(x: Any) -> bool:
  """Whether ``x`` is an NNX Variable (``nnx.Param``, ``OptVariable``...)."""
  return isinstance(x, nnx.Variable)


def _is_node(x: Any) -> bool:
  return x is None or isinstance(x, (nnx.Variable, nnx.State))


def holds_variables(tree: Any) -> bool:
  """Whether ``tree`` is an ``nnx.State`` or holds NNX Variables."""
  return any(isinstance(x, (nnx.Variable, nnx.State))
             for x in jax.tree.leaves(tree, is_leaf=_is_node))


def params_of(tree: Any) -> Any:
  """An ``nnx.Module``'s ``nnx.Param`` state; anything else as given."""
  if isinstance(tree, nnx.Module):
    return nnx.state(tree, nnx.Param)
  return tree


def without_variables(tree: Any) -> Any:
  """``tree`` with every NNX Variable replaced by its value, containers
  (``nnx.State`` included) kept: the form ``nnx.Optimizer`` hands to
  ``update``."""
  if not holds_variables(tree):
    return tree
  return jax.tree.map(
      lambda x: x.get_value() if is_variable(x) else x, tree,
      is_leaf=is_variable)


def plain(tree: Any) -> Any:
  """``tree`` with NNX wrappers removed: a module becomes the pure dict of
  its ``nnx.Param`` state, an ``nnx.State`` a nested dict, a Variable its
  value.  Trees without NNX parts come back unchanged."""
  tree = params_of(tree)

  def unwrap(x):
    if isinstance(x, nnx.State):
      return {key: plain(value) for key, value in x.items()}
    if isinstance(x, nnx.Variable):
      return plain(x.get_value())
    return x

  if not holds_variables(tree):
    return tree
  return jax.tree.map(unwrap, tree, is_leaf=_is_node)


def _by_path(tree: Any) -> dict[_trees.Path, Any]:
  flat = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: x is None)[0]
  return {_trees.readable_path(path): leaf for path, leaf in flat}


def conformed(tree: Any, like: Any, what: str) -> Any:
  """``tree`` (a plain form, or another NNX form) in the structure of
  ``like``, its leaves matched by readable path, where ``like`` holds NNX
  Variables; otherwise the plain form of ``tree``.

  ``None`` entries of ``tree`` stay ``None``.  Paths of ``tree`` that
  ``like`` lacks, or the reverse, raise ``ValueError`` naming them and
  ``what``.
  """
  if not holds_variables(like):
    return plain(tree)
  given = _by_path(plain(tree))
  wanted = _by_path(like)
  missing = [p for p in wanted if p not in given]
  extra = [p for p in given if p not in wanted]
  if missing or extra:
    raise ValueError(
        f"{what} do not have the leaves of the params: "
        + "; ".join(
            part for part in (
                missing and "missing " + ", ".join(
                    _trees.path_string(p) for p in missing),
                extra and "not in the params " + ", ".join(
                    _trees.path_string(p) for p in extra))
            if part))
  return jax.tree_util.tree_map_with_path(
      lambda path, _: given[_trees.readable_path(path)], like)


def as_functional(fn: Callable[..., Any], params: Any) -> tuple[Callable[..., Any], Any]:
  """For an ``nnx.Module`` given where params go: ``fn(module, *args)`` as a
  function of the module's plain ``nnx.Param`` values, and those values.

  The module's other state (batch statistics, RNG counters) is copied into
  every call, so that what ``fn`` changes in it stays inside the call.
  Anything else comes back as given.
  """
  if not isinstance(params, nnx.Module):
    return fn, params

  def on_values(values, *args, **kwargs):
    return fn(loaded(params, values), *args, **kwargs)

  return on_values, plain(params)


def is_module(x: Any) -> bool:
  """Whether ``x`` is an ``nnx.Module``."""
  return isinstance(x, nnx.Module)


def loaded(module: nnx.Module | None, values: Any) -> Any:
  """A copy of ``module`` holding the plain ``nnx.Param`` ``values`` (its
  other state copied); ``values`` as given when there is no module."""
  if module is None:
    return values
  graphdef, state, rest = nnx.split(module, nnx.Param, ...)
  return nnx.merge(graphdef, conformed(values, state, "the params"),
                   jax.tree.map(lambda x: x, rest))
