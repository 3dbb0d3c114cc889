"""Weight sharing, centroid fine-tuning, quantization and entropy-coded
storage: the compression pipeline of Deep Compression after pruning.

Masks are the ones the rest of jaxprune returns (True = kept, ``None`` for
unpruned leaves).  The pipeline:

- :func:`codebooks`: per layer, ``2**bits`` shared values by k-means
  (Lloyd's algorithm, :func:`kmeans`) over the kept weights only, each kept
  weight's index, the mask; :func:`shared_params` gives the params back with
  every kept weight its centroid and every pruned one exactly 0.0;
- :func:`fine_tune_centroids`: an optax transformation that trains the
  centroids (each one's gradient the sum of its weights') and keeps every
  kept weight on its centroid bit for bit; :func:`fine_tuned` reads the
  trained codebooks back;
- :func:`compress` / :func:`decompress`, :func:`save` / :func:`load`: the
  codebooks, indices and relative positions, Huffman coded, exactly;
  :func:`size_report`: the bytes after each stage (dense, pruned, shared,
  Huffman) with its compression rate;
- :func:`quantize` / :func:`dequantize`: per-channel symmetric integers
  that keep pruned weights zero (qwix does the same by rules over module
  paths, and quantization-aware training).

Example:
  Pruned to 10%, 4-bit shared values and Huffman coding: 35 times
  smaller than float32, and the shared params back bit for bit.

  >>> import jax, jax.numpy as jnp
  >>> import jaxprune
  >>> from jaxprune import sharing
  >>> params = {'dense': {'kernel': jax.random.normal(jax.random.key(0), (300, 100)),
  ...                     'bias': jnp.zeros(100)}}
  >>> masks = jaxprune.prune_once(params, sparsity=0.9)
  >>> shared = sharing.codebooks(params, masks, bits=4)
  >>> [round(s.rate, 1) for s in sharing.size_report(shared).stages]
  [1.0, 7.3, 30.8, 35.4]
  >>> back = sharing.decompress(sharing.compress(shared))
  >>> bool(jnp.array_equal(sharing.shared_params(back)['dense']['kernel'],
  ...                      sharing.shared_params(shared)['dense']['kernel']))
  True

References:
  Han, Mao and Dally, "Deep Compression: Compressing Deep Neural Networks
  with Pruning, Trained Quantization and Huffman Coding", ICLR 2016,
  https://arxiv.org/abs/1510.00149

  Marinò, Ghidoli, Frasca and Malchiodi, "Compression strategies and
  space-conscious representations for deep neural networks", ICPR 2020,
  https://arxiv.org/abs/2007.07967
"""

from jaxprune._sharing_kmeans import INITS
from jaxprune._sharing_kmeans import Codebook
from jaxprune._sharing_kmeans import SharedWeights
from jaxprune._sharing_kmeans import codebooks
from jaxprune._sharing_kmeans import index_dtype
from jaxprune._sharing_kmeans import initial_centroids
from jaxprune._sharing_kmeans import kmeans
from jaxprune._sharing_kmeans import shared_params
from jaxprune._sharing_quantize import QuantizedLeaf
from jaxprune._sharing_quantize import dequantize
from jaxprune._sharing_quantize import quantize
from jaxprune._sharing_storage import ENCODINGS
from jaxprune._sharing_storage import STAGES
from jaxprune._sharing_storage import CompressedShared
from jaxprune._sharing_storage import CompressionReport
from jaxprune._sharing_storage import LeafStages
from jaxprune._sharing_storage import SharedLeaf
from jaxprune._sharing_storage import Stage
from jaxprune._sharing_storage import compress
from jaxprune._sharing_storage import decompress
from jaxprune._sharing_storage import default_gap_bits
from jaxprune._sharing_storage import gap_symbols
from jaxprune._sharing_storage import load
from jaxprune._sharing_storage import save
from jaxprune._sharing_storage import shared_masks
from jaxprune._sharing_storage import size_report
from jaxprune._sharing_tune import FineTuneState
from jaxprune._sharing_tune import fine_tune_centroids
from jaxprune._sharing_tune import fine_tuned

__all__ = [
    "ENCODINGS",
    "INITS",
    "STAGES",
    "Codebook",
    "CompressedShared",
    "CompressionReport",
    "FineTuneState",
    "LeafStages",
    "QuantizedLeaf",
    "SharedLeaf",
    "SharedWeights",
    "Stage",
    "codebooks",
    "compress",
    "decompress",
    "default_gap_bits",
    "dequantize",
    "fine_tune_centroids",
    "fine_tuned",
    "gap_symbols",
    "index_dtype",
    "initial_centroids",
    "kmeans",
    "load",
    "quantize",
    "save",
    "shared_masks",
    "shared_params",
    "size_report",
]
