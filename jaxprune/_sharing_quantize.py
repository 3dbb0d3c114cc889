"""Post-training symmetric quantization per output channel, which keeps
pruned weights exactly zero.

Symmetric quantization maps 0.0 to the integer 0 and back to 0.0, so a
pruned model stays pruned: ``q = clip(round(w / scale), -qmax, qmax)`` with
``qmax = 2**(bits - 1) - 1`` and, per output channel (the last axis of a
dense or conv kernel), ``scale = max |w| / qmax`` (1.0 for a channel of
zeros).  Weights come back as ``q * scale``.

This is the small pure form of what `qwix <https://github.com/google/qwix>`_
does by rules over module paths (``qwix.PtqProvider`` with
``weight_qtype="int8"`` quantizes kernels per output channel,
symmetrically, as here); qwix is the route for quantization-aware training
(``qwix.QtProvider``), which composes with :func:`jaxprune.prune` (see the
compression guide).
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxprune import _nested
from jaxprune import _trees


class QuantizedLeaf(NamedTuple):
  """One quantized leaf.

  Attributes:
    values: int8 (``bits <= 8``) or int16, the leaf's shape.
    scale: float32 ``[channels]``: one scale per entry of the last axis.
    dtype: the leaf's dtype name, for :func:`dequantize`.
  """

  values: Any
  scale: Any
  dtype: str


def quantize(params: Any, masks: Any = None, *, bits: int = 8,
             prunable: _trees.PrunablePredicate | None = None) -> Any:
  """Symmetric per-output-channel quantization of the kernels; pruned
  weights (where ``masks`` is False) are exactly 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import sharing
    >>> params = {'w': jnp.array([[0.5, -2.0], [0.0, 1.0], [-1.0, 0.3]]),
    ...           'b': jnp.ones(2)}
    >>> masks = {'w': jnp.array([[True, True], [False, True], [True, True]]),
    ...          'b': None}
    >>> quantized = sharing.quantize(params, masks, bits=8)
    >>> quantized['w'].values.tolist(), quantized['b'] is params['b']
    ([[64, -127], [0, 64], [-127, 19]], True)
    >>> sharing.dequantize(quantized)['w'][1].tolist()
    [0.0, 1.0078740119934082]

  Args:
    params: nested dicts of arrays (Linen params), or Flax NNX params (a
      module, an ``nnx.State`` or its plain form).
    masks: the nesting of ``params`` with a boolean array (True = kept) or
      ``None`` at every leaf; ``None``: nothing pruned.  Masked weights are
      set to 0 before quantizing.
    bits: ``2..16``; integers in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``.
    prunable: which leaves are quantized, a ``(path, leaf) -> bool``
      predicate; ``None``: floating leaves of 2 or more dimensions (the
      kernels).

  Returns:
    Nested dicts: a :class:`QuantizedLeaf` at every quantized leaf, the
    leaf as given elsewhere.
  """
  caller = "jaxprune.sharing.quantize"
  if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
    raise ValueError(f"{caller}: bits must be an integer from 2 to 16, got {bits!r}")
  if masks is None:
    skeleton, flat = _nested.flatten(params, caller)
    leaves = [(path, leaf, None) for path, leaf in flat]
  else:
    skeleton, leaves = _nested.paired(params, masks, caller)
  qmax = 2**(bits - 1) - 1
  out = []
  for path, leaf, mask in leaves:
    predicate = _trees.default_prunable if prunable is None else prunable
    if not predicate(path, leaf):
      if mask is not None:
        raise ValueError(
            f"{caller}: {_trees.path_string(path)} is pruned but not quantized; "
            "select it with prunable, or give None as its mask")
      out.append(leaf)
      continue
    w = np.asarray(leaf, np.float32)
    if mask is not None:
      w = np.where(mask, w, np.float32(0))
    reduce = tuple(range(w.ndim - 1))
    peak = np.max(np.abs(w), axis=reduce) if w.ndim else np.abs(w)
    scale = np.where(peak > 0, peak / np.float32(qmax), np.float32(1)).astype(np.float32)
    q = np.clip(np.round(w / scale), -qmax, qmax)
    out.append(QuantizedLeaf(jnp.asarray(q.astype(np.int8 if bits <= 8 else np.int16)),
                             jnp.asarray(scale), np.dtype(np.asarray(leaf).dtype).name))
  return _nested.unflatten(skeleton, out)


def dequantize(quantized: Any) -> Any:
  """The params of :func:`quantize`: every quantized leaf ``q * scale`` in
  its dtype (pruned weights exactly 0.0), the others as they were.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import sharing
    >>> w = sharing.dequantize(sharing.quantize({'w': jnp.array([[1.0, 0.0]])}))['w']
    >>> w.tolist()
    [[1.0, 0.0]]
  """
  if isinstance(quantized, QuantizedLeaf):
    values = quantized.values.astype(jnp.float32) * quantized.scale[
        (None,) * (quantized.values.ndim - 1)]
    return values.astype(quantized.dtype)
  if isinstance(quantized, dict):
    return {key: dequantize(value) for key, value in quantized.items()}
  return quantized
