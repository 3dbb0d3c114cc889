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
from jaxprune._sharing_tune import FineTuneState
from jaxprune._sharing_tune import fine_tune_centroids
from jaxprune._sharing_tune import fine_tuned

__all__ = [
    "INITS",
    "Codebook",
    "FineTuneState",
    "SharedWeights",
    "codebooks",
    "fine_tune_centroids",
    "fine_tuned",
    "index_dtype",
    "initial_centroids",
    "kmeans",
    "shared_params",
]
