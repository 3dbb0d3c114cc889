"""Sparse inference: pruned kernels as BCOO matrices, and models that run on them.

:func:`to_bcoo` turns every masked leaf into a
``jax.experimental.sparse.BCOO`` holding only its kept entries;
:func:`sparse_apply` makes a Linen ``apply`` function or a Flax NNX module
take such params, through ``jax.experimental.sparse.sparsify``: the
model's own ``dot_general`` becomes ``bcoo_dot_general``, no layer changes.

Only matrix products have sparse rules: a conv layer with a BCOO kernel
raises ``NotImplementedError`` ("bcoo convolution with leading dimensions
other than (1, 1)") in JAX 0.10, so a model with conv layers keeps their
kernels dense (``select=lambda path, leaf: leaf.ndim == 2``).

Example:
  >>> import jax, jax.numpy as jnp
  >>> import flax.linen as nn
  >>> import jaxprune
  >>> from jaxprune import export
  >>> model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(4)])
  >>> x = jnp.ones((2, 8))
  >>> params = model.init(jax.random.key(0), x)['params']
  >>> masks = jaxprune.prune_once(params, sparsity=0.9, allocation='layerwise')
  >>> sparse_params = export.to_bcoo(params, masks)
  >>> sparse_params['layers_0']['kernel'].nse  # 10% of 8 x 32
  26
  >>> apply = jax.jit(export.sparse_apply(model.apply))
  >>> dense = model.apply({'params': jaxprune.apply_masks(params, masks)}, x)
  >>> bool(jnp.allclose(apply({'params': sparse_params}, x), dense, atol=1e-6))
  True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import sparse

from jaxprune import _nested
from jaxprune import _nnx
from jaxprune import _trees


def _bcoo(leaf: Any, mask: np.ndarray) -> sparse.BCOO:
  """``leaf``'s kept entries (kept zeros too), indices sorted row-major."""
  indices = np.argwhere(mask)
  index_dtype = np.int32 if mask.size < 2**31 else np.int64
  return sparse.BCOO(
      (jnp.asarray(np.asarray(leaf)[mask]), jnp.asarray(indices, index_dtype)),
      shape=tuple(mask.shape), indices_sorted=True, unique_indices=True)


def to_bcoo(params: Any, masks: Any, *,
            select: _trees.PrunablePredicate | None = None) -> Any:
  """The params with each masked leaf as a BCOO array of its kept entries.

  Example:
    Conv kernels stay dense, masked.

    >>> import jax.numpy as jnp
    >>> from jaxprune import export
    >>> params = {'conv': {'kernel': jnp.ones((3, 3, 1, 2))},
    ...           'dense': {'kernel': jnp.array([[0.0, 1.0], [2.0, 3.0]])}}
    >>> masks = {'conv': {'kernel': jnp.ones((3, 3, 1, 2), bool)},
    ...          'dense': {'kernel': jnp.array([[True, False], [False, True]])}}
    >>> out = export.to_bcoo(params, masks, select=lambda path, leaf: leaf.ndim == 2)
    >>> kernel = out['dense']['kernel']
    >>> type(kernel).__name__, kernel.nse, kernel.data.tolist()
    ('BCOO', 2, [0.0, 3.0])
    >>> kernel.todense().tolist(), type(out['conv']['kernel']).__name__
    ([[0.0, 0.0], [0.0, 3.0]], 'ArrayImpl')

  Args:
    params: nested dicts of arrays (Linen params), or Flax NNX params: an
      ``nnx.Module``, an ``nnx.State`` or its plain form.
    masks: the nesting of ``params`` with a boolean array (True = kept) or
      ``None`` at every leaf.
    select: ``(path, leaf) -> bool``: which masked leaves become BCOO; the
      others are returned dense with their pruned weights set to 0.  By
      default every masked leaf.

  Returns:
    Nested dicts (for NNX, the plain form): each selected masked leaf a
    ``BCOO`` with ``nse`` = its number of kept weights (a kept weight that is
    exactly 0 is stored, and ``data`` keeps every bit, though ``todense()``
    adds into zeros and so shows a kept ``-0.0`` as ``0.0``), sorted
    row-major indices (``int32``) and the leaf's dtype; each other leaf as
    given, masked if it has a mask.

  Raises:
    ValueError: masks that do not fit the params, naming the leaf.
    TypeError: a mask that is not boolean, or ``select`` returning
      something else than a bool.
  """
  caller = "jaxprune.export.to_bcoo"
  skeleton, leaves = _nested.paired(params, masks, caller)
  out = []
  for path, leaf, mask in leaves:
    if mask is None:
      out.append(leaf)
      continue
    chosen = True if select is None else select(path, leaf)
    if not isinstance(chosen, (bool, np.bool_)):
      raise TypeError(
          f"{caller}: select returned {chosen!r} for "
          f"{_trees.path_string(path)}; it must return True or False")
    if chosen:
      out.append(_bcoo(leaf, mask))
    else:
      out.append(jnp.where(mask, leaf, jnp.zeros_like(leaf)))
  return _nested.unflatten(skeleton, out)


def sparse_apply(fn: Callable[..., Any] | nnx.Module) -> Callable[..., Any]:
  """A model function that takes BCOO leaves (from :func:`to_bcoo`) in its
  params, computing with them sparse.

  Example:
    Flax NNX, jitted.

    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxprune
    >>> from jaxprune import export
    >>> model = nnx.Sequential(nnx.Linear(8, 16, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(16, 2, rngs=nnx.Rngs(1)))
    >>> masks = jaxprune.prune_once(model, sparsity=0.8)
    >>> sparse_params = export.to_bcoo(model, masks)
    >>> x = jnp.ones((3, 8))
    >>> y = jax.jit(export.sparse_apply(model))(sparse_params, x)
    >>> jaxprune.apply_masks(model, masks)  # the dense masked model
    >>> bool(jnp.allclose(y, model(x), atol=1e-6))
    True

  Args:
    fn: a function whose arguments may hold BCOO arrays, e.g. a Linen
      model's ``apply`` (called ``fn({'params': sparse_params}, x)``); or a
      Flax NNX module, which gives ``f(sparse_params, *args, **kwargs)``:
      the module called on ``args`` with ``sparse_params`` (the plain form of
      its ``nnx.Param`` state, as :func:`to_bcoo` returns it) in place of its
      params, its other state copied.  The module is not changed.

  Returns:
    ``jax.experimental.sparse.sparsify`` of the function; jit it as any
    function.  Layers whose operations have no sparse rule (convolutions)
    raise ``NotImplementedError`` for a BCOO kernel: keep those dense.
  """
  if isinstance(fn, nnx.Module):
    module = fn

    def fn(params, *args, **kwargs):
      return _nnx.loaded(module, params)(*args, **kwargs)
  # The tracer form of sparsify: its default jaxpr interpreter rebinds a
  # custom_jvp_call whose inputs are all dense without its functions, and
  # jax.nn.relu is one (KeyError: 'subfuns', JAX 0.10.2).
  return sparse.sparsify(fn, use_tracer=True)
