"""Hard-concrete L0 gates (Louizos, Welling and Kingma 2018) as a param transform.

A gate ``z`` in [0, 1] multiplies a group of weights: one weight, the input
neuron of a dense layer (a row of its ``(in, out)`` kernel) or the output
filter of a convolution (the last axis of its kernel, and the matching bias
entry).  Each gate has a parameter ``log_alpha`` that lives in the params tree,
next to the kernel it gates, so any optax optimizer trains it with the
weights.  The model itself is not changed: :func:`apply_gates` turns the gated
params into the plain params the model expects, multiplying every gated group
by its gate, sampled from a PRNG key during training, deterministic at test
time.  Gating a row of a dense kernel is the same as gating that input
neuron; gating a filter's kernel slice and bias is the same as gating its
output channel.

Where the gates live: the gate of a leaf named ``kernel`` is the sibling
``log_alpha`` in the same dict; the gate of any other leaf ``name`` is
``name + '_log_alpha'``.  The granularity is read from the shapes: a
``log_alpha`` of the kernel's shape gates single weights; a vector of
``in`` entries beside a 2-D ``(in, out)`` kernel gates input neurons; a
vector of ``out`` entries beside a kernel of 3 or more dimensions
``(..., in, out)`` gates output filters.

Constants (Louizos et al.): ``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxprune
  >>> params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}}
  >>> gated = jaxprune.add_gates(params, jax.random.key(0), granularity='unit')
  >>> gated['dense']['log_alpha'].shape  # one gate per input neuron
  (3,)
  >>> train_params = jaxprune.apply_gates(gated, jax.random.key(1))
  >>> jax.tree.map(jnp.shape, train_params)  # what the model expects
  {'dense': {'bias': (2,), 'kernel': (3, 2)}}
  >>> round(float(jaxprune.expected_density(gated).model), 3)
  0.832
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxprune import _nnx
from jaxprune import _trees

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
EPSILON = 1e-6
LOG_ALPHA_RANGE = (math.log(0.01), math.log(100.0))
"""The published clipping range of ``log_alpha`` (Gallego-Posada et al.)."""

_GATE_KEY = "log_alpha"
_GRANULARITIES = ("weight", "unit")


def gate_key(name: str) -> str:
  """The key of the gate of leaf ``name``: ``'log_alpha'`` for ``'kernel'``."""
  return _GATE_KEY if name == "kernel" else f"{name}_{_GATE_KEY}"


def _gated_name(key: Any) -> str | None:
  """The leaf that the gate stored under ``key`` gates, or None."""
  if not isinstance(key, str):
    return None
  if key == _GATE_KEY:
    return "kernel"
  suffix = "_" + _GATE_KEY
  return key[: -len(suffix)] if key.endswith(suffix) else None


def probability_nonzero(log_alpha: jax.Array) -> jax.Array:
  """``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))``."""
  return jax.nn.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def _stretch(s: jax.Array) -> jax.Array:
  return jnp.clip(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def sample_gates(log_alpha: jax.Array, key: jax.Array) -> jax.Array:
  """Training gates: the hard-concrete sample of Louizos et al.

  ``u ~ U(eps, 1 - eps)``, ``z = clip(sigmoid((log u - log(1 - u) +
  log_alpha) / beta) * (zeta - gamma) + gamma, 0, 1)``; differentiable in
  ``log_alpha``.
  """
  u = jax.random.uniform(
      key, jnp.shape(log_alpha), jnp.result_type(log_alpha),
      minval=EPSILON, maxval=1.0 - EPSILON,
  )
  return _stretch(jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / BETA))


def deterministic_gates(log_alpha: jax.Array, louizos: bool = False) -> jax.Array:
  """Deterministic gates: ``clip(sigmoid(log_alpha / beta) * (zeta - gamma) +
  gamma, 0, 1)`` (Gallego-Posada et al.), or without ``/ beta`` as in Louizos'
  code if ``louizos``.  A group is removed iff its gate is exactly 0."""
  scaled = log_alpha if louizos else log_alpha / BETA
  return _stretch(jax.nn.sigmoid(scaled))


class _Gate(NamedTuple):
  """One gated leaf, found in a gated params tree."""

  path: tuple  # of the dict holding the leaf
  name: str  # the gated leaf's key in that dict
  granularity: str  # "weight" | "input" | "filter"
  group_size: int  # weights per gate
  gates_bias: bool  # a filter gate also gates the dict's "bias"


def _granularity(path, name, leaf, log_alpha, mapping) -> tuple[str, int, bool]:
  shape, gate_shape = np.shape(leaf), np.shape(log_alpha)
  where = _trees.path_string((*path, gate_key(name)))
  if gate_shape == shape:
    return "weight", 1, False
  if len(shape) == 2 and gate_shape == shape[:1]:
    return "input", shape[1], False
  if len(shape) >= 3 and gate_shape == shape[-1:]:
    bias = mapping.get("bias") if name == "kernel" else None
    has_bias = bias is not None and np.shape(bias) == shape[-1:]
    return "filter", math.prod(shape[:-1]) + int(has_bias), has_bias
  raise ValueError(
      f"gate {where} has shape {gate_shape}, which fits none of the gate "
      f"granularities of a leaf of shape {shape}: {shape} (one per weight), "
      "(in,) for a 2-D (in, out) kernel (input neurons), or (out,) for a "
      "kernel of 3 or more dimensions (output filters)"
  )


def _find_gates(params: Any) -> list[_Gate]:
  """Every gated leaf of ``params``, in tree order."""
  found = []

  def visit(node, path):
    if isinstance(node, Mapping):
      for key in sorted(node):  # JAX's order of dict keys
        name = _gated_name(key)
        if name is not None:
          if name not in node:
            raise ValueError(
                f"gate {_trees.path_string((*path, key))} has no leaf "
                f"{name!r} beside it to gate"
            )
          found.append(
              _Gate(path, name, *_granularity(path, name, node[name], node[key], node))
          )
        else:
          visit(node[key], (*path, key))
    elif isinstance(node, (list, tuple)):
      for i, child in enumerate(node):
        visit(child, (*path, i))

  visit(params, ())
  return found


def _gates_or_raise(params: Any, caller: str) -> list[_Gate]:
  gates = _find_gates(params)
  if not gates:
    raise ValueError(
        f"{caller}: the params hold no L0 gate (no 'log_alpha' leaf); add "
        "them with jaxprune.add_gates"
    )
  return gates


def _node(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _rebuild(tree: Any, path: tuple, replace: Callable[[Mapping], dict]) -> Any:
  """A copy of ``tree`` whose dict at ``path`` is ``replace(dict)``."""
  if not path:
    return replace(tree)
  head, rest = path[0], path[1:]
  if isinstance(tree, Mapping):
    return {**tree, head: _rebuild(tree[head], rest, replace)}
  items = list(tree)
  items[head] = _rebuild(items[head], rest, replace)
  return type(tree)(items)


def add_gates(
    params: Any,
    key: jax.Array,
    *,
    granularity: str | Callable[[_trees.Path, Any], str | None] = "weight",
    drop_rate: float | Callable[[_trees.Path, Any], float] = 0.5,
    gated: _trees.PrunablePredicate | None = None,
    rescale_weights: bool = False,
) -> Any:
  """Adds a ``log_alpha`` gate parameter beside every gated leaf.

  With ``rescale_weights``, every leaf a gate multiplies (and the bias of a
  gated filter) is also divided by ``1 - d0``, its gate's initial keep
  rate, as Gallego-Posada et al.'s code does when it creates the gates: the
  gates shrink the weights they multiply by about that factor at
  initialisation, and the division makes the gated network start from the
  ungated one's scale (the weights are doubled at ``d0 = 0.5``).  Louizos
  et al.'s code leaves the weights as they are, which is the default.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
    >>> gated = jaxprune.add_gates(params, jax.random.key(0), granularity='unit',
    ...                            drop_rate=0.5, rescale_weights=True)
    >>> gated['dense']['kernel'][0].tolist(), gated['dense']['bias'].tolist()
    ([2.0, 2.0], [1.0, 1.0])

  Args:
    params: the model's params, nested dicts as Flax makes them.
    key: PRNG key of the initialisation.
    granularity: ``'weight'`` (one gate per weight, unstructured) or
      ``'unit'`` (structured: one gate per input neuron of a 2-D dense
      kernel, one per output filter of a conv kernel of 3 or more
      dimensions, which also gates the ``bias`` beside it); or a function
      ``(path, leaf) -> 'weight' | 'unit' | None`` choosing per leaf
      (``None``: leave the leaf ungated).
    drop_rate: the initial drop rate ``d0``, or a function ``(path, leaf) ->
      d0``: ``log_alpha ~ N(log((1 - d0) / d0), 0.01)``.  Louizos et al. use
      0.5, and 0.2 for the input layer of an MLP.
    gated: predicate ``(path, leaf) -> bool`` of the leaves to gate; the
      default gates floating leaves with ``ndim >= 2`` (the kernels).
    rescale_weights: divide every gated leaf, and the bias that a filter
      gate also gates, by ``1 - d0`` (Gallego-Posada et al.); default False
      (Louizos et al.).

  Returns:
    ``params`` with the ``log_alpha`` leaves added (see the module docstring
    for where); the original leaves are unchanged unless
    ``rescale_weights``.

  Raises:
    ValueError: if no leaf is gated, a gated leaf is not in a dict or already
      has a gate, a drop rate is outside (0, 1), or the granularity is unknown.
  """
  if isinstance(params, nnx.Module):
    _add_gates_to_module(params, add_gates(
        _nnx.plain(params), key, granularity=granularity,
        drop_rate=drop_rate, gated=gated, rescale_weights=rescale_weights))
    return None
  flags = jax.tree.leaves(_trees.prunable_mask(params, gated))
  chosen = []
  for (path, leaf), flag in zip(_trees.leaves_with_paths(params), flags):
    if not flag:
      continue
    kind = granularity(path, leaf) if callable(granularity) else granularity
    if kind is None:
      continue
    if kind not in _GRANULARITIES:
      raise ValueError(
          f"unknown gate granularity {kind!r} for {_trees.path_string(path)}; "
          f"expected one of {_GRANULARITIES}"
      )
    d0 = drop_rate(path, leaf) if callable(drop_rate) else drop_rate
    if not (isinstance(d0, numbers.Real) and 0.0 < d0 < 1.0):
      raise ValueError(
          f"drop rate of {_trees.path_string(path)} must be in (0, 1), got {d0!r}"
      )
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          f"gated leaf {_trees.path_string(path)} has dtype "
          f"{jnp.result_type(leaf)}; only floating-point leaves can be gated"
      )
    if not path or not isinstance(path[-1], str):
      raise ValueError(
          f"gated leaf {_trees.path_string(path)} is not an entry of a dict; "
          "the gate is stored beside it in the same dict"
      )
    shape = np.shape(leaf)
    if kind == "weight":
      gate_shape = shape
    elif len(shape) == 2:
      gate_shape = shape[:1]
    elif len(shape) >= 3:
      gate_shape = shape[-1:]
    else:
      raise ValueError(
          f"'unit' gates need a 2-D dense or a conv kernel; "
          f"{_trees.path_string(path)} has shape {shape}"
      )
    chosen.append((path, leaf, gate_shape, float(d0)))
  if not chosen:
    raise ValueError("add_gates: no leaf of the params is selected for gating")

  keys = jax.random.split(key, len(chosen))
  for (path, leaf, gate_shape, d0), k in zip(chosen, keys):
    parent, name = path[:-1], path[-1]
    if gate_key(name) in _node(params, parent):
      raise ValueError(
          f"{_trees.path_string(path)} already has a gate "
          f"{gate_key(name)!r}"
      )
    mean = math.log((1.0 - d0) / d0)
    log_alpha = mean + 0.01 * jax.random.normal(k, gate_shape, jnp.result_type(leaf))
    # A filter gate multiplies the bias beside its kernel too (_granularity).
    filter_bias = (len(gate_shape) == 1 and len(np.shape(leaf)) >= 3
                   and name == "kernel")

    def insert(mapping, name=name, log_alpha=log_alpha, d0=d0,
               filter_bias=filter_bias, gate_shape=gate_shape):
      out = {**mapping, gate_key(name): log_alpha}
      if rescale_weights:  # Gallego-Posada et al.: w / (1 - d0)
        out[name] = _rescaled(mapping[name], d0)
        bias = mapping.get("bias")
        if filter_bias and bias is not None and np.shape(bias) == gate_shape:
          out["bias"] = _rescaled(bias, d0)
      return out

    params = _rebuild(params, parent, insert)
  return params


def _submodule(module: nnx.Module, path: tuple) -> Any:
  for key in path:
    module = module[key] if isinstance(key, int) else getattr(module, key)
  return module


def _add_gates_to_module(module: nnx.Module, gated: Any) -> None:
  """Sets every gate of ``gated`` (plain params) on ``module`` as an
  ``nnx.Param`` beside the leaf it gates, and the (rescaled) weights."""
  gates = _find_gates(gated)
  for gate in gates:
    key = gate_key(gate.name)
    setattr(_submodule(module, gate.path), key,
            nnx.Param(_node(gated, gate.path)[key]))
  nnx.update(module, _nnx.conformed(
      gated, nnx.state(module, nnx.Param), "the gated params"))


def _rescaled(leaf: Any, d0: float) -> jax.Array:
  """``leaf / (1 - d0)``, in the leaf's dtype."""
  leaf = jnp.asarray(leaf)
  return (leaf / (1.0 - d0)).astype(leaf.dtype)


def _gate_values(params, gates, key, louizos):
  if key is None:
    return [deterministic_gates(_node(params, g.path)[gate_key(g.name)], louizos)
            for g in gates]
  keys = jax.random.split(key, len(gates))
  return [sample_gates(_node(params, g.path)[gate_key(g.name)], k)
          for g, k in zip(gates, keys)]


def _expand(gate: _Gate, z: jax.Array, ndim: int) -> jax.Array:
  """``z`` shaped to broadcast against the gated leaf."""
  if gate.granularity == "input":
    return z[:, None]
  if gate.granularity == "filter":
    return z.reshape((1,) * (ndim - 1) + z.shape)
  return z


def _without_gate_keys(mapping: Mapping) -> dict:
  return {k: v for k, v in mapping.items() if _gated_name(k) is None}


def _strip(params: Any, gates: list[_Gate]) -> Any:
  for path in {g.path for g in gates}:
    params = _rebuild(params, path, _without_gate_keys)
  return params


def apply_gates(params: Any, key: jax.Array | None = None, *,
                louizos_test_gates: bool = False) -> Any:
  """The params the model expects: gated groups multiplied by their gates.

  Args:
    params: params with gates (from :func:`add_gates`).
    key: a PRNG key to sample the training gates (a fresh key every step);
      ``None`` for the deterministic test-time gates.
    louizos_test_gates: test-time gates without the ``1 / beta`` scaling, as
      in Louizos' code.

  Returns:
    ``params`` without the ``log_alpha`` leaves, every gated leaf (and the
    bias of a gated filter) multiplied by its gates.  Differentiable in both
    the weights and ``log_alpha``.
  """
  if isinstance(params, nnx.Module):
    return _gated_module(params, key, louizos_test_gates)
  gates = _gates_or_raise(params, "apply_gates")
  values = _gate_values(params, gates, key, louizos_test_gates)
  for gate, z in zip(gates, values):

    def multiply(mapping, gate=gate, z=z):
      leaf = mapping[gate.name]
      out = {**mapping, gate.name: leaf * _expand(gate, z, jnp.ndim(leaf)).astype(leaf.dtype)}
      if gate.gates_bias:
        out["bias"] = mapping["bias"] * z.astype(mapping["bias"].dtype)
      return out

    params = _rebuild(params, gate.path, multiply)
  return _strip(params, gates)


def _gated_module(module: nnx.Module, key: jax.Array | None,
                  louizos_test_gates: bool) -> nnx.Module:
  """A copy of ``module`` whose gated weights are multiplied by their gates;
  its other state (batch statistics...) is the module's own."""
  graphdef, state, rest = nnx.split(module, nnx.Param, ...)
  values = _nnx.plain(state)
  gated = apply_gates(values, key, louizos_test_gates=louizos_test_gates)
  by_path = dict(_trees.leaves_with_paths(values))
  by_path.update(_trees.leaves_with_paths(gated))
  params = jax.tree_util.tree_map_with_path(
      lambda path, _: by_path[_trees.readable_path(path)], state)
  return nnx.merge(graphdef, params, rest, recreate_variables=False)


def hard_masks(params: Any, *, louizos_test_gates: bool = False) -> Any:
  """The final masks: True where the test-time gate is not exactly zero.

  Returns:
    A tree with the structure of the model's params (no gates): a boolean
    array of the leaf's shape for every gated leaf and the bias of every gated
    filter, ``None`` for the others; readable by :func:`jaxprune.sparsity`.

  Raises:
    ValueError: a ``log_alpha`` holds NaN (training diverged: its gates,
      and so the masks, are undefined).  Inside ``jit``, where nothing can
      raise, a NaN gate is not exactly zero and counts as kept.
  """
  params = _nnx.without_variables(_nnx.params_of(params))
  gates = _gates_or_raise(params, "hard_masks")
  for gate in gates:
    log_alpha = _node(params, gate.path)[gate_key(gate.name)]
    if not isinstance(log_alpha, jax.core.Tracer):
      nan = int(np.count_nonzero(np.isnan(np.asarray(log_alpha))))
      if nan:
        where = _trees.path_string((*gate.path, gate_key(gate.name)))
        raise ValueError(
            f"{where} holds NaN at {nan} of {np.size(log_alpha)} gates: "
            "training diverged, and their masks are undefined")
  values = _gate_values(params, gates, None, louizos_test_gates)
  masks = jax.tree.map(lambda _: None, _strip(params, gates))
  for gate, z in zip(gates, values):
    leaf = _node(params, gate.path)[gate.name]
    kept = jnp.broadcast_to(_expand(gate, z, jnp.ndim(leaf)) != 0, jnp.shape(leaf))

    def put(mapping, gate=gate, kept=kept, z=z):
      out = {**mapping, gate.name: kept}
      if gate.gates_bias:
        out["bias"] = z != 0
      return out

    masks = _rebuild(masks, gate.path, put)
  return _nnx.plain(masks)


class Density(NamedTuple):
  """Expected L0 density of gated params.

  Attributes:
    model: scalar, ``sum_k q_k n_k / sum_k n_k`` over the gated layers.
    layers: dict from the gated leaf's path (``'Dense_0/kernel'``) to its
      expected density ``q_k = sum_g P(z_g != 0) |g| / n_k``, in tree order.
    sizes: dict with the same keys: ``n_k``, the number of gated weights.
  """

  model: jax.Array
  layers: dict[str, jax.Array]
  sizes: dict[str, int]


def expected_density(params: Any) -> Density:
  """The expected fraction of gated weights that are not zero.

  A deterministic, differentiable function of the ``log_alpha`` leaves
  (METHODS section 4): ``q_k = sum_g P(z_g != 0) |g| / n_k`` per layer and
  their size-weighted mean for the model.  ``|g|`` is the group size: 1 for
  a weight gate, ``out`` for an input neuron, ``in * kh * kw (+ 1 with the
  bias)`` for a filter.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'d': {'kernel': jnp.ones((2, 3)), 'log_alpha': jnp.array([-9.0, 9.0])}}
    >>> d = jaxprune.expected_density(params)
    >>> d.sizes, round(float(d.layers['d/kernel']), 3)
    ({'d/kernel': 6}, 0.5)
  """
  params = _nnx.without_variables(_nnx.params_of(params))
  gates = _gates_or_raise(params, "expected_density")
  layers, sizes = {}, {}
  for gate in gates:
    log_alpha = _node(params, gate.path)[gate_key(gate.name)]
    n = int(np.size(log_alpha)) * gate.group_size
    name = _trees.path_string((*gate.path, gate.name))
    layers[name] = jnp.sum(probability_nonzero(log_alpha)) * (gate.group_size / n)
    sizes[name] = n
  total = sum(sizes.values())
  model = sum(q * (sizes[k] / total) for k, q in layers.items())
  return Density(model, layers, sizes)


def expected_l0(params: Any) -> jax.Array:
  """The expected number of non-zero gated weights, ``sum_g P(z_g != 0) |g|``:
  the L0 penalty of Louizos et al."""
  density = expected_density(params)
  return sum(q * density.sizes[k] for k, q in density.layers.items())


def gate_labels(params: Any) -> Any:
  """``'gates'`` for every ``log_alpha`` leaf, ``'weights'`` for the others.

  For ``optax.partition``, to train the gates with their own optimizer, as
  Gallego-Posada et al. do.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import jaxprune
    >>> params = {'d': {'kernel': jnp.ones((2, 2)), 'log_alpha': jnp.zeros(2)}}
    >>> jaxprune.gate_labels(params)
    {'d': {'kernel': 'weights', 'log_alpha': 'gates'}}
    >>> tx = optax.partition({'weights': optax.adam(7e-4),
    ...                       'gates': optax.adam(1e-2)}, jaxprune.gate_labels)
  """
  if isinstance(params, nnx.Module):
    return gate_labels(_nnx.plain(params))
  values = _nnx.without_variables(params)
  labels = jax.tree.map(lambda _: "weights", values)
  for gate in _gates_or_raise(values, "gate_labels"):
    key = gate_key(gate.name)
    labels = _rebuild(labels, gate.path, lambda m, key=key: {**m, key: "gates"})
  # In the structure given: an nnx.Optimizer's state, under optax.partition.
  return _nnx.conformed(labels, params, "the labels")


class ClipLogAlphaState(NamedTuple):
  """:func:`clip_log_alpha` keeps no state."""


def clip_log_alpha(
    lower: float = LOG_ALPHA_RANGE[0], upper: float = LOG_ALPHA_RANGE[1]
) -> optax.GradientTransformationExtraArgs:
  """Keeps every ``log_alpha`` in ``[lower, upper]`` after the step.

  Put it last in the chain: it changes the ``log_alpha`` updates so that
  ``params + updates`` is clipped, and leaves the others alone.  The default
  is the published range ``[ln 0.01, ln 100]``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import jaxprune
    >>> params = {'d': {'kernel': jnp.ones((2, 2)), 'log_alpha': jnp.array([0.0, 4.0])}}
    >>> tx = optax.chain(optax.sgd(1.0), jaxprune.clip_log_alpha())
    >>> grads = {'d': {'kernel': jnp.zeros((2, 2)), 'log_alpha': jnp.array([-1.0, -2.0])}}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['d']['log_alpha'].round(3)
    Array([1.   , 4.605], dtype=float32)
  """
  if not lower < upper:
    raise ValueError(f"clip_log_alpha needs lower < upper, got {lower}, {upper}")

  def init_fn(params):
    del params
    return ClipLogAlphaState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("clip_log_alpha needs the params: call update(updates, state, params)")
    _trees.check_same_shapes(params, updates, "the updates (gradients)")
    gates = _gates_or_raise(params, "clip_log_alpha")
    given = updates
    for gate in gates:
      key = gate_key(gate.name)
      p = _node(params, gate.path)[key]

      def clip(mapping, p=p, key=key):
        u = mapping[key]
        return {**mapping, key: (jnp.clip(p + u, lower, upper) - p).astype(u.dtype)}

      updates = _rebuild(updates, gate.path, clip)
    # Rebuilt as dicts; back in the given structure (an nnx.State's).
    return _nnx.conformed(updates, given, "the clipped updates"), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
