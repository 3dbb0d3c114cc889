"""Weight sharing, centroid fine-tuning and entropy-coded storage: the
compression pipeline of Deep Compression after pruning.

placeholder
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
