"""Export: pruned params as smaller files, and as sparse matrices for inference.

Pruning leaves the params dense, with zeros.  This namespace turns params
and their masks (True = kept, ``None`` for unpruned leaves, as
:func:`jaxprune.masks_of` and :func:`jaxprune.prune_once` return them) into

- exact compact storage: :func:`compress` in one of three formats
  (``"bitmask"``, ``"csr"`` with Deep Compression's relative indices,
  ``"n_of_m"`` for N:M masks), :func:`decompress` bit for bit,
  :func:`size_report` of the bytes saved, :func:`save` and :func:`load` of
  ``.npz`` files without pickle;
- sparse inference: :func:`to_bcoo` makes each masked kernel a
  ``jax.experimental.sparse.BCOO`` of its kept entries, and
  :func:`sparse_apply` runs a Linen or NNX model on them.

Params are nested dicts with str or int keys: Linen params, or Flax NNX
params (a module, an ``nnx.State``, or the plain form
``nnx.to_pure_dict(nnx.state(model, nnx.Param))``, which is what comes
back).

Example:
  Under a tenth of the float32 bytes, and the params back bit for bit.

  >>> import jax, jax.numpy as jnp
  >>> import jaxprune
  >>> from jaxprune import export
  >>> params = {'dense': {'kernel': jax.random.normal(jax.random.key(0), (256, 128)),
  ...                     'bias': jnp.zeros(128)}}
  >>> masks = jaxprune.prune_once(params, sparsity=0.95)
  >>> packed = export.compress(params, masks, "csr")
  >>> round(export.size_report(packed).ratio, 3)
  0.074
  >>> restored = export.decompress(packed)
  >>> expected = jaxprune.apply_masks(params, masks)
  >>> bool(jnp.all(restored['dense']['kernel'] == expected['dense']['kernel']))
  True
"""

from jaxprune._export import sparse_apply
from jaxprune._export import to_bcoo
from jaxprune._storage import FORMATS
from jaxprune._storage import Compressed
from jaxprune._storage import EncodedLeaf
from jaxprune._storage import LeafSize
from jaxprune._storage import SizeReport
from jaxprune._storage import compress
from jaxprune._storage import decompress
from jaxprune._storage import load
from jaxprune._storage import save
from jaxprune._storage import size_report

__all__ = [
    "FORMATS",
    "Compressed",
    "EncodedLeaf",
    "LeafSize",
    "SizeReport",
    "compress",
    "decompress",
    "load",
    "save",
    "size_report",
    "sparse_apply",
    "to_bcoo",
]
