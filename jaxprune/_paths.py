"""Input-to-output paths of a masked network: SynFlow and layer collapse.

Give a ReLU network non-negative weights, zero biases and an all-ones input,
and every unit is active: its output sums the products of the weights along
every path from the input to the output.  The gradient of that sum with
respect to a weight, times the weight, is the total weight of the paths
through it, and it is zero exactly when no input-to-output path of kept
weights goes through it.  This gives:

- :func:`synflow` (Tanaka et al. 2020): data-free pruning before training by
  the path scores ``|w * dR/dw|`` of the network with weights ``|w|``, over
  many rounds, so that no layer is cut off.
- :func:`connectivity`: which prunable layers still carry a path, and how
  many of their kept weights lie on one (the others are dead weight: SNIP's
  layer collapse at high sparsity cuts every path).

``apply_fn(params, x)`` is the network, with normalization layers in
evaluation mode (batch norm with non-negative effective scales keeps the
argument valid only without mean subtraction, so these functions are meant
for networks without normalization, or with it folded into the weights).
Every leaf is made non-negative.  :func:`connectivity` zeroes the leaves
named ``bias``, so that its sums count paths alone; :func:`synflow` takes
their absolute values, as the authors' code does (``zero_biases=True``
zeroes them there too).

References:
  Tanaka, Kunin, Yamins and Ganguli, "Pruning neural networks without any
  data by iteratively conserving synaptic flow", NeurIPS 2020,
  https://arxiv.org/abs/2006.05467
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import _allocation
from jaxprune import _checks
from jaxprune import _masked
from jaxprune import _masks
from jaxprune import _nnx
from jaxprune import _plans
from jaxprune import _trees

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def _positive_network(params: Any, masks: Any, unit_average: bool,
                      zero_biases: bool = True) -> Any:
  """The params of the path-counting network: biases 0 if ``zero_biases``,
  the rest ``|w|``, pruned weights 0 (masks hold ``None`` for unmasked
  leaves)."""

  def positive(path, leaf, mask):
    if zero_biases and _trees.readable_path(path)[-1] == "bias":
      return jnp.zeros_like(leaf)
    value = jnp.abs(leaf)
    if mask is None:
      return value
    if unit_average:
      # Only the pattern matters: each output unit averages its kept inputs,
      # so a connected unit's value stays near 1 however sparse the layer.
      kept = jnp.sum(mask, axis=tuple(range(mask.ndim - 1)), keepdims=True,
                     dtype=leaf.dtype)
      value = jnp.broadcast_to(1 / jnp.maximum(kept, 1), jnp.shape(leaf))
    return jnp.where(mask, value, jnp.zeros_like(value))

  return jax.tree_util.tree_map_with_path(
      positive, params, masks, is_leaf=lambda x: x is None)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _path_scores(apply_fn, params, masks, input_shape, unit_average,
                 zero_biases=True):
  """The total path weight ``R`` and ``w * dR/dw`` for every leaf."""
  positive = _positive_network(params, masks, unit_average, zero_biases)
  x = jnp.ones((1,) + tuple(input_shape), jnp.result_type(
      *jax.tree.leaves(params)))

  def total(p):
    return jnp.sum(apply_fn(p, x))

  paths, grads = jax.value_and_grad(total)(positive)
  return paths, jax.tree.map(jnp.multiply, grads, positive)


def _check_input_shape(input_shape: Any, caller: str) -> tuple[int, ...]:
  if (not isinstance(input_shape, Sequence)
      or not all(isinstance(d, int) and d > 0 for d in input_shape)):
    raise ValueError(
        f"{caller}: input_shape must be a tuple of positive ints (one "
        f"example's shape, without the batch axis), got {input_shape!r}")
  return tuple(input_shape)


def synflow(
    apply_fn: ApplyFn,
    params: Any,
    input_shape: Sequence[int],
    *,
    sparsity: float,
    rounds: int = 100,
    allocation: str = "global",
    prunable: _trees.PrunablePredicate | None = None,
    zero_biases: bool = False,
) -> Any:
  """SynFlow: masks at ``sparsity`` from path scores, without data.

  Round ``k`` of ``rounds`` keeps the weights with the highest path score
  ``|w| * dR/d|w|`` of the masked network at sparsity
  ``1 - (1 - sparsity) ** (k / rounds)`` (the authors' exponential
  schedule), so the last round reaches ``sparsity`` exactly (counts and ties
  as in :func:`jaxprune.prune`).  ``R`` is the sum of the outputs of the
  network on an all-ones input with every parameter replaced by its absolute
  value, biases included, as in the authors' code: non-zero biases (PyTorch
  initialises them so) add to every unit's value and change the scores.
  ``zero_biases=True`` zeroes the leaves named ``bias`` instead, so that
  ``R`` sums the input-to-output paths alone (a deviation from the
  authors; it is what :func:`connectivity` computes).

  Example:
    Biases, as the authors count them or zeroed (``zero_biases``):

    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'a': {'kernel': jnp.array([[1.0, 1.0]]),
    ...                 'bias': jnp.array([0.0, 3.0])},
    ...           'b': {'kernel': jnp.array([[2.0], [1.0]])}}
    >>> apply_fn = lambda p, x: (jnp.maximum(x @ p['a']['kernel']
    ...                                      + p['a']['bias'][None], 0)
    ...                          @ p['b']['kernel'])
    >>> # R = 2 * (1 + |0|) + 1 * (1 + |3|): b's scores are 2 and 4.
    >>> jaxprune.synflow(apply_fn, params, (1,), sparsity=0.5,
    ...                  rounds=1)['b']['kernel'].tolist()
    [[False], [True]]
    >>> # Biases zeroed: R = 2 * 1 + 1 * 1, b's scores are 2 and 1.
    >>> jaxprune.synflow(apply_fn, params, (1,), sparsity=0.5, rounds=1,
    ...                  zero_biases=True)['b']['kernel'].tolist()
    [[True], [False]]

    A network without biases:

    >>> import jax, jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'a': jax.random.normal(jax.random.key(0), (4, 8)),
    ...           'b': jax.random.normal(jax.random.key(1), (8, 2))}
    >>> apply_fn = lambda p, x: jax.nn.relu(x @ p['a']) @ p['b']
    >>> masks = jaxprune.synflow(apply_fn, params, (4,), sparsity=0.5,
    ...                          rounds=10)
    >>> int(masks['a'].sum() + masks['b'].sum())
    24

  Args:
    apply_fn: ``(params, x) -> outputs``, the network (see the module
      docstring).
    params: the parameter tree (at initialisation).
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    sparsity: the fraction of prunable weights removed, in ``[0, 1]``.
    rounds: the number of rounds (100 in the paper).
    allocation: ``"global"`` (one ranking over all tensors, each keeping
      its best weight), ``"global_topk"`` (the papers' plain global top-k,
      which can empty a tensor), ``"layerwise"`` or ``"erk"``.
    prunable: ``(path, leaf) -> bool``; by default the floating leaves with
      ``ndim >= 2``.
    zero_biases: zero the leaves named ``bias`` in the path-counting
      network rather than take their absolute values (default False, the
      authors' SynFlow).

  Returns:
    A tree with the structure of ``params``: a boolean array (True = kept)
    for every prunable leaf, ``None`` for the others.

  Raises:
    ValueError: bad sparsity, rounds or input shape; NaN or inf in a
      prunable leaf; a path sum that is not finite (overflow: use float64
      params with ``jax_enable_x64``).
    TypeError: a leaf of the params that is not real floating-point.
  """
  caller = "jaxprune.synflow"
  apply_fn, params = _nnx.as_functional(apply_fn, params)
  sparsity = _checks.check_sparsity(sparsity, "sparsity")
  if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
    raise ValueError(f"{caller}: rounds must be a positive integer, got {rounds!r}")
  input_shape = _check_input_shape(input_shape, caller)
  _allocation.check_allocation(allocation)
  levels = [1.0 - (1.0 - sparsity) ** (k / rounds) for k in range(1, rounds + 1)]
  levels[-1] = sparsity
  plan = _plans.make_plan(
      params, prunable, allocation,
      lambda shapes, units: [
          _allocation.kept_counts(s, shapes, allocation) for s in levels],
      caller=caller)
  _trees.check_differentiable(params, caller, real=True)
  _plans.check_finite(params, plan, caller)
  masks = _masks.all_kept(plan, params)
  select = jax.jit(functools.partial(
      _masked.selected_masks, plan=plan, allocation=allocation))
  for level in range(rounds):
    paths, scores = _path_scores(apply_fn, params, masks, input_shape, False,
                                 bool(zero_biases))
    if not np.isfinite(float(paths)):
      raise ValueError(
          f"{caller}: the path sum R is {float(paths)} at round {level}; "
          "either a leaf that is not pruned holds NaN or inf, or the "
          "network's path weights overflow this dtype: then use float64 "
          "params (jax.config.update('jax_enable_x64', True))")
    masks, _ = select(scores, masks, kept=jnp.asarray(plan.kept[level]))
  return masks


class Connectivity(NamedTuple):
  """What :func:`connectivity` reports.

  Attributes:
    connected: whether any path of kept weights joins the input to the
      output.
    effective: for every prunable leaf (by path string), how many of its
      kept weights lie on such a path.
    kept: for every prunable leaf, how many weights its mask keeps.
    disconnected: the prunable leaves none of whose kept weights lies on a
      path (every leaf when ``connected`` is False).
  """

  connected: bool
  effective: dict[str, int]
  kept: dict[str, int]
  disconnected: tuple[str, ...]


def connectivity(
    apply_fn: ApplyFn, params: Any, masks: Any, input_shape: Sequence[int]
) -> Connectivity:
  """Which layers of a masked network still join its input to its output.

  Layer collapse (a layer pruned so far that no path crosses it) makes the
  network's output constant; this detects it, and counts the kept weights
  that lie on no path (they cannot influence the output).

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'a': jnp.ones((2, 2)), 'b': jnp.ones((2, 1))}
    >>> apply_fn = lambda p, x: jnp.maximum(x @ p['a'], 0) @ p['b']
    >>> masks = {'a': jnp.array([[True, False], [True, False]]),
    ...          'b': jnp.array([[False], [True]])}  # a feeds unit 0, b reads 1
    >>> report = jaxprune.connectivity(apply_fn, params, masks, (2,))
    >>> report.connected, report.disconnected
    (False, ('a', 'b'))

  Args:
    apply_fn: ``(params, x) -> outputs`` (see the module docstring).
    params: the parameter tree.
    masks: masks as :func:`jaxprune.masks_of` returns them.
    input_shape: one example's shape.

  Returns:
    A :class:`Connectivity`.
  """
  input_shape = _check_input_shape(input_shape, "jaxprune.connectivity")
  apply_fn, params = _nnx.as_functional(apply_fn, params)
  masks = _nnx.conformed(masks, params, "the masks")
  is_none = lambda x: x is None
  _trees.check_same_structure(
      jax.tree.map(lambda _: 0, params),
      jax.tree.map(lambda _: 0, masks, is_leaf=is_none), "the masks")
  for (path, leaf), mask in zip(_trees.leaves_with_paths(params),
                                jax.tree.leaves(masks, is_leaf=is_none)):
    if mask is not None and np.shape(mask) != np.shape(leaf):
      raise ValueError(
          f"jaxprune.connectivity: the mask of {_trees.path_string(path)} has "
          f"shape {np.shape(mask)} but the param has shape {np.shape(leaf)}")
  paths, scores = _path_scores(apply_fn, params, masks, input_shape, True)
  effective, kept = {}, {}
  flat_masks = jax.tree.leaves(masks)  # None leaves dropped
  masked_paths = [
      _trees.path_string(path)
      for (path, _), mask in zip(
          _trees.leaves_with_paths(params),
          jax.tree.leaves(masks, is_leaf=is_none))
      if mask is not None
  ]
  masked_scores = [
      score for score, mask in zip(
          jax.tree.leaves(scores), jax.tree.leaves(masks, is_leaf=is_none))
      if mask is not None
  ]
  for name, mask, score in zip(masked_paths, flat_masks, masked_scores):
    mask = np.asarray(mask)
    kept[name] = int(mask.sum())
    effective[name] = int(np.count_nonzero(mask & (np.asarray(score) > 0)))
  connected = bool(float(paths) > 0)
  disconnected = tuple(name for name in masked_paths if effective[name] == 0)
  return Connectivity(connected, effective, kept, disconnected)
