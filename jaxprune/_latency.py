"""A latency lookup table: each layer timed alone at a grid of widths.

Hardware-aware filter pruning (HFP, Yu et al. 2020) predicts a network's
latency from its filter configuration with a lookup table measured on the
target hardware, layer by layer: FLOPs are not latency.  Here each dense or
conv layer of a sequential network (``layers``, as for
:func:`jaxprune.shrink`) is run alone, jitted, at a grid of (input width,
output width) pairs, on the input shape it receives when the model runs on
the user's batch.  A layer's input width is the previous layer's output
width; the first layer's input and the last layer's output are fixed.  The
whole dense network is timed too: the *rest* (pooling, activations,
flattening, per-call overheads) is its latency minus the sum of the dense
layers' entries, held constant.  :meth:`LatencyTable.predict` sums the
entries at the given widths, interpolated bilinearly between grid points,
plus the rest.

Example:
  >>> import flax.linen as nn
  >>> import jax, jax.numpy as jnp
  >>> import jaxprune
  >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
  >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
  >>> def fake(fn, weights, x):  # 1 microsecond per input and output pair
  ...   return x.shape[-1] * jax.eval_shape(fn, weights, x).shape[-1] * 1e-6
  >>> table = jaxprune.latency_table(
  ...     model, jnp.ones((4, 3)), layers=['layers_0', 'layers_2'],
  ...     variables=variables, widths={'layers_0': [4]}, measure=fake)
  >>> table.outputs['layers_0'].tolist(), table.inputs['layers_2'].tolist()
  ([1, 4, 8], [1, 4, 8])
  >>> table.seconds['layers_0'].tolist()  # 3 inputs, 1, 4 or 8 outputs
  [[3e-06, 1.2e-05, 2.4e-05]]
  >>> round((table.predict({'layers_0': 6}) - table.rest) * 1e6, 6)  # 18 + 12
  30.0

References:
  Yu, Han, Wang, Huang, Huang and Cui, "HFP: Hardware-Aware Filter Pruning
  for Deep Convolutional Neural Networks Acceleration", ICPR 2020.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import _recording
from jaxprune import _structured

_CALLER = "jaxprune.latency_table"
_POINTS = 8  # default grid points per layer, the full width included


def median_latency(fn: Callable[..., Any], *args: Any, repeats: int = 20,
                   timer: Callable[[], float] = time.perf_counter) -> float:
  """The median time of ``fn(*args)``, in seconds, compilation excluded.

  Calls ``fn`` once to compile and warm up, then ``repeats`` times, each
  timed with ``timer`` around the call and ``jax.block_until_ready`` of its
  result.  The default ``measure`` of :func:`latency_table`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxprune
    >>> clock = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # 1, 3 and 2 s
    >>> jaxprune.median_latency(jax.jit(jnp.sin), jnp.ones(3), repeats=3,
    ...                         timer=lambda: next(clock))
    2.0

  Args:
    fn: a function, jitted for a meaningful time.
    *args: its arguments.
    repeats: the timed calls, >= 1.
    timer: a clock in seconds (``time.perf_counter``).

  Returns:
    The median of the ``repeats`` times, in seconds.

  Raises:
    ValueError: ``repeats`` below 1.
  """
  if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral) or repeats < 1:
    raise ValueError(f"jaxprune.median_latency: repeats must be an int >= 1, got {repeats!r}")
  jax.block_until_ready(fn(*args))  # compiles, warms up
  times = []
  for _ in range(repeats):
    start = timer()
    jax.block_until_ready(fn(*args))
    times.append(timer() - start)
  return float(np.median(times))


def _bracket(grid: np.ndarray, value: int) -> tuple[int, int, float]:
  """Indices ``i <= j`` of the grid points around ``value`` and its weight
  ``t`` on ``j`` (0 at a grid point)."""
  j = int(np.searchsorted(grid, value))
  if grid[j] == value:
    return j, j, 0.0
  i = j - 1
  return i, j, float((value - grid[i]) / (grid[j] - grid[i]))


class LatencyTable(NamedTuple):
  """A layer-by-layer latency lookup table (:func:`latency_table`).

  Plain numpy arrays and Python numbers: :meth:`to_dict` gives a
  JSON-friendly dict and :meth:`from_dict` reads it back, so a table
  measured once on a device can be kept and reused.

  Attributes:
    layers: the dense and conv layers, in call order.
    inputs: ``{layer: int[i]}``, the input widths of its grid, increasing
      (the first layer's: its fixed input width).
    outputs: ``{layer: int[o]}``, the output widths of its grid, increasing,
      from 1 to the full width (the last layer's: its fixed width).
    seconds: ``{layer: float64[i, o]}``, the layer's latency at each pair.
    total: the whole dense network's measured latency, in seconds.
    rest: ``total`` minus the sum of the layers' entries at full width: the
      time outside them (pooling, activations, per-call overheads counted
      once per layer), held constant; it may be negative.
    input_shape: the shape of the batch the table was measured on.
  """

  layers: tuple[str, ...]
  inputs: dict[str, np.ndarray]
  outputs: dict[str, np.ndarray]
  seconds: dict[str, np.ndarray]
  total: float
  rest: float
  input_shape: tuple[int, ...]

  def full_widths(self) -> dict[str, int]:
    """``{layer: its full output width}``."""
    return {name: int(self.outputs[name][-1]) for name in self.layers}

  def predict(self, widths: Mapping[str, int]) -> float:
    """The predicted latency, in seconds, of the network at ``widths``.

    The sum over the layers of the entry at (input width, output width),
    interpolated bilinearly between grid points (exact at them), plus
    :attr:`rest`.

    Example:
      >>> import numpy as np
      >>> import jaxprune
      >>> table = jaxprune.LatencyTable(
      ...     layers=('h', 'o'), inputs={'h': np.array([3]), 'o': np.array([1, 9])},
      ...     outputs={'h': np.array([1, 9]), 'o': np.array([2])},
      ...     seconds={'h': np.array([[1.0, 5.0]]), 'o': np.array([[1.0], [3.0]])},
      ...     total=9.0, rest=1.0, input_shape=(1, 3))
      >>> table.predict({'h': 5})  # 3 + 2 + 1
      6.0

    Args:
      widths: ``{layer: output width}`` of hidden layers (others: full), as
        :attr:`jaxprune.Shrunk.widths` gives (the last layer's, if given,
        must be its full width).

    Returns:
      Seconds.

    Raises:
      ValueError: an unknown layer, or a width that is not an int from 1 to
        the layer's full width.
    """
    caller = "LatencyTable.predict"
    full = self.full_widths()
    for name, width in widths.items():
      if name not in full:
        raise ValueError(f"{caller}: {name!r} is not a layer of the table "
                         f"{list(self.layers)}")
      if isinstance(width, bool) or not isinstance(width, numbers.Integral | np.integer):
        raise ValueError(f"{caller}: the width of {name!r} must be an int, got {width!r}")
      if not 1 <= width <= full[name]:
        raise ValueError(f"{caller}: the width of {name!r} must be from 1 to "
                         f"{full[name]}, got {width}")
    if self.layers[-1] in widths and widths[self.layers[-1]] != full[self.layers[-1]]:
      raise ValueError(
          f"{caller}: the last layer {self.layers[-1]!r} has a fixed width "
          f"{full[self.layers[-1]]}, got {widths[self.layers[-1]]}")
    total, width_in = self.rest, int(self.inputs[self.layers[0]][0])
    for name in self.layers:
      width_out = int(widths.get(name, full[name]))
      i0, i1, s = _bracket(self.inputs[name], width_in)
      j0, j1, t = _bracket(self.outputs[name], width_out)
      table = self.seconds[name]
      total += ((1 - s) * (1 - t) * table[i0, j0] + (1 - s) * t * table[i0, j1]
                + s * (1 - t) * table[i1, j0] + s * t * table[i1, j1])
      width_in = width_out
    return float(total)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-friendly dict of lists and numbers (:meth:`from_dict`)."""
    return {
        "layers": list(self.layers),
        "inputs": {k: v.tolist() for k, v in self.inputs.items()},
        "outputs": {k: v.tolist() for k, v in self.outputs.items()},
        "seconds": {k: v.tolist() for k, v in self.seconds.items()},
        "total": self.total, "rest": self.rest,
        "input_shape": list(self.input_shape),
    }

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
    """The table of :meth:`to_dict`'s ``data``.

    Raises:
      ValueError: missing keys, or a layer whose seconds are not
        ``[inputs, outputs]``.
    """
    keys = ("layers", "inputs", "outputs", "seconds", "total", "rest", "input_shape")
    missing = [k for k in keys if k not in data]
    if missing:
      raise ValueError(f"LatencyTable.from_dict: missing {missing}")
    layers = tuple(data["layers"])
    table = cls(
        layers=layers,
        inputs={k: np.asarray(data["inputs"][k], np.int64) for k in layers},
        outputs={k: np.asarray(data["outputs"][k], np.int64) for k in layers},
        seconds={k: np.asarray(data["seconds"][k], np.float64) for k in layers},
        total=float(data["total"]), rest=float(data["rest"]),
        input_shape=tuple(int(d) for d in data["input_shape"]))
    for name in layers:
      shape = (table.inputs[name].size, table.outputs[name].size)
      if table.seconds[name].shape != shape:
        raise ValueError(
            f"LatencyTable.from_dict: the seconds of {name!r} have shape "
            f"{table.seconds[name].shape}, expected {shape}")
    return table


def _grids(params: Any, layers: Sequence[str], widths: Any) -> dict[str, np.ndarray]:
  """The output-width grid of every layer: 1 and the full width always."""
  full = {name: int(np.shape(params[name]["kernel"])[-1]) for name in layers}
  points, given = _POINTS, {}
  if isinstance(widths, Mapping):
    given = dict(widths)
  elif widths is not None:
    if isinstance(widths, bool) or not isinstance(widths, numbers.Integral) or widths < 2:
      raise ValueError(f"{_CALLER}: widths must be a number of grid points >= 2 "
                       f"or {{layer: [widths]}}, got {widths!r}")
    points = int(widths)
  hidden = list(layers[:-1])
  for name, values in given.items():
    if name not in hidden:
      raise ValueError(
          f"{_CALLER}: widths names {name!r}, which is not a hidden layer of "
          f"{hidden} (the last layer's output width is fixed)")
    values = list(values) if isinstance(values, Sequence | np.ndarray) else None
    if not values:
      raise ValueError(f"{_CALLER}: the widths of {name!r} must be a non-empty "
                       "list of ints")
    for w in values:
      if (isinstance(w, bool) or not isinstance(w, numbers.Integral | np.integer)
          or not 1 <= w <= full[name]):
        raise ValueError(f"{_CALLER}: the widths of {name!r} must be ints from 1 "
                         f"to {full[name]}, got {w!r}")
  grids = {}
  for name in layers:
    if name == layers[-1]:
      grids[name] = np.array([full[name]])
    elif name in given:
      grids[name] = np.unique(np.array([1, *given[name], full[name]], np.int64))
    else:
      grids[name] = np.unique(np.round(np.linspace(
          1, full[name], min(points, full[name]))).astype(np.int64))
  return grids


def _resized_input(x: Any, units: int, width: int, name: str) -> jax.Array:
  """An input like ``x`` whose last axis reads ``width`` of the previous
  layer's ``units`` (a flattened ``(h, w, c)`` map keeps its positions)."""
  shape = np.shape(x)
  if shape[-1] % units:
    raise ValueError(
        f"{_CALLER}: layer {name!r} reads {shape[-1]} inputs, not the {units} "
        "units of the layer before it or a flattened map of them; list the "
        "layers in call order")
  new = (*shape[:-1], shape[-1] // units * width)
  rng = np.random.default_rng(0)
  return jax.device_put(rng.standard_normal(new).astype(jnp.result_type(x)))


def _linen_layer(module: nn.Module, name: str, width: int, x: jax.Array):
  """``(fn, args)`` running a copy of the Linen ``module`` with ``width``
  outputs on ``x``."""
  features = getattr(module, "features", None)
  if isinstance(features, bool) or not isinstance(features, numbers.Integral):
    raise ValueError(
        f"{_CALLER}: cannot rebuild layer {name!r} ({type(module).__name__}) "
        "at other widths: it has no int 'features' (nn.Dense and nn.Conv do)")
  if getattr(module, "feature_group_count", 1) != 1:
    raise ValueError(f"{_CALLER}: layer {name!r} is a grouped convolution, "
                     "which cannot be rebuilt at other input widths")
  copy = module.clone(parent=None, features=width)
  # Made from shapes alone: an eager init would compile its ops anew for
  # every shape of the grid (20 s for a small table on a CPU).
  shapes = jax.eval_shape(copy.init, jax.random.key(0), x)
  variables = jax.tree.map(
      lambda s: jax.device_put(np.full(s.shape, 0.01, s.dtype)), shapes)
  return jax.jit(copy.apply), (variables, x)


def _nnx_layer(layer: nnx.Module, name: str, units_before: int, width_in: int,
               width: int, x: jax.Array):
  """``(fn, args)`` running a copy of the NNX ``layer`` sliced to read
  ``width_in`` of the previous layer's ``units_before`` units (at every
  position of a flattened map) and to have ``width`` outputs, on ``x``."""
  if not isinstance(layer, nnx.Linear | nnx.Conv):
    raise ValueError(
        f"{_CALLER}: cannot rebuild layer {name!r} ({type(layer).__name__}) "
        "at other widths: only nnx.Linear and nnx.Conv are supported")
  if isinstance(layer, nnx.Conv) and (layer.feature_group_count != 1
                                      or layer.mask is not None):
    raise ValueError(f"{_CALLER}: layer {name!r} is a grouped or masked "
                     "convolution, which cannot be rebuilt at other widths")
  copy = nnx.clone(layer)  # merge(*split(layer)) would share its Variables
  kernel = np.asarray(copy.kernel.get_value())  # numpy: no compilation per shape
  *taps, rows, outputs = kernel.shape
  kernel = kernel.reshape(*taps, rows // units_before, units_before, outputs)
  kernel = kernel[..., :width_in, :width].reshape(
      *taps, rows // units_before * width_in, width)
  copy.kernel.set_value(jax.device_put(kernel))
  if copy.bias is not None:
    copy.bias.set_value(jax.device_put(np.asarray(copy.bias.get_value())[:width]))
  copy.in_features, copy.out_features = width_in, width
  if isinstance(copy, nnx.Conv):
    copy.kernel_shape = tuple(copy.kernel.get_value().shape)
  graphdef, state = nnx.split(copy)
  return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)), (state, x)


def latency_table(
    model: Any,
    inputs: Any,
    *,
    layers: Sequence[str],
    variables: Any = None,
    widths: int | Mapping[str, Sequence[int]] | None = None,
    repeats: int = 20,
    measure: Callable[..., float] | None = None,
) -> LatencyTable:
  """Measures a latency lookup table of ``model``'s layers on this device.

  Runs the model once on ``inputs`` to record each layer's module and input
  shape, then times every layer alone, jitted, with ``measure(fn, *args)``
  at each pair of its grid: input widths the previous layer's output grid
  (the first layer's input fixed), output widths its own grid (the last
  layer's fixed).  A Linen layer is cloned with ``features=`` the output
  width and initialised on an input of the input width; an NNX
  ``nnx.Linear`` or ``nnx.Conv`` is copied with its kernel and bias sliced.
  A dense layer after a conv layer keeps the flattened map's positions.
  The whole dense network is timed too (:attr:`LatencyTable.rest`).

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> import jaxprune
    >>> model = nn.Sequential([nn.Dense(6), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> table = jaxprune.latency_table(
    ...     model, jnp.ones((128, 3)), layers=['layers_0', 'layers_2'],
    ...     variables=variables, widths=3, repeats=5)
    >>> table.outputs['layers_0'].tolist(), table.seconds['layers_2'].shape
    ([1, 4, 6], (3, 1))
    >>> table.predict({'layers_0': 6}) == table.predict({})
    True

  Args:
    model: a Flax Linen module (with ``variables``) or a Flax NNX model, in
      evaluation mode; called as ``model.apply(variables, inputs)`` or
      ``model(inputs)``.
    inputs: the batch whose latency matters (batch 1 for a single request,
      or the serving batch); only its shapes and dtypes are used.
    layers: the dense and conv layers, in call order (as for
      :func:`jaxprune.shrink`): top-level submodules (NNX: attributes),
      each called once.
    variables: the Linen model's variables (``{'params': ...}``, with its
      ``batch_stats`` if any).
    widths: the output-width grid of the hidden layers: a number of evenly
      spaced points from 1 to the full width (default 8), or ``{layer:
      [widths]}`` (others: the default); 1 and the full width are always
      added.
    repeats: the timed calls of the default ``measure``
      (:func:`median_latency`).
    measure: ``measure(fn, *args) -> seconds``, to time ``fn(*args)``
      (default: :func:`median_latency` with ``repeats``).

  Returns:
    A :class:`LatencyTable`.

  Raises:
    ValueError: unknown layers, a layer the model does not call or that
      cannot be rebuilt at other widths (only layers with an int
      ``features``, or ``nnx.Linear`` and ``nnx.Conv``), bad ``widths``, a
      measured time that is not finite and >= 0; each message names the
      layer.
  """
  params = _recording.model_params(model, variables, _CALLER)
  _structured.check_layers(params, layers, None, _CALLER)
  if measure is None:
    if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral) or repeats < 1:
      raise ValueError(f"{_CALLER}: repeats must be an int >= 1, got {repeats!r}")
    measure = lambda fn, *args: median_latency(fn, *args, repeats=repeats)
  elif not callable(measure):
    raise TypeError(f"{_CALLER}: measure must be a function (fn, *args) -> "
                    f"seconds, got {type(measure).__name__}")
  grids = _grids(params, layers, widths)
  calls = _recording.layer_calls(model, inputs, layers, variables, _CALLER)
  for name in layers:
    if name not in calls:
      raise ValueError(
          f"{_CALLER}: layer {name!r} was not called by the model (the layers "
          "must be top-level submodules named as in the params)")

  def timed(what: str, fn, *args) -> float:
    value = measure(fn, *args)
    if not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
      raise ValueError(f"{_CALLER}: measure returned {value!r} for {what}; "
                       "expected finite seconds >= 0")
    return float(value)

  first = layers[0]
  first_width = int(np.shape(calls[first].inputs)[-1])
  in_grids = {first: np.array([first_width])}
  for before, name in zip(layers[:-1], layers[1:]):
    in_grids[name] = grids[before]
  seconds = {}
  for position, name in enumerate(layers):
    call = calls[name]
    units_before = (first_width if position == 0 else
                    int(np.shape(params[layers[position - 1]]["kernel"])[-1]))
    table = np.zeros((in_grids[name].size, grids[name].size))
    for i, width_in in enumerate(in_grids[name]):
      x = _resized_input(call.inputs, units_before, int(width_in), name)
      for j, width in enumerate(grids[name]):
        if isinstance(call.module, nnx.Module):
          fn, args = _nnx_layer(call.module, name, units_before, int(width_in),
                                int(width), x)
        else:
          fn, args = _linen_layer(call.module, name, int(width), x)
        table[i, j] = timed(f"layer {name!r} at ({width_in}, {width})", fn, *args)
    seconds[name] = table
  apply, own_params, stats = _recording.pure_apply(model, variables, _CALLER)
  whole = jax.jit(lambda weights, x: apply(*weights, x))
  total = timed("the whole network", whole, (own_params, stats), inputs)
  dense = sum(seconds[name][-1, -1] for name in layers)
  return LatencyTable(
      layers=tuple(layers), inputs=in_grids, outputs=grids, seconds=seconds,
      total=total, rest=float(total - dense),
      input_shape=tuple(int(d) for d in np.shape(jax.tree.leaves(inputs)[0])))
