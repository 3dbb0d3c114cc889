"""jaxprune: functional neural-network pruning for JAX, as optax transformations."""

from jaxprune import criteria
from jaxprune import schedules
from jaxprune._flipout import FlipOutSchedule
from jaxprune._flipout import FlipOutState
from jaxprune._flipout import flip_counts
from jaxprune._flipout import flipout
from jaxprune._flipout import flipout_schedule
from jaxprune._flipout import flipout_sparsity
from jaxprune._inspect import Sparsity
from jaxprune._inspect import masks_of
from jaxprune._inspect import sparsity
from jaxprune._pruning import PruneState
from jaxprune._pruning import prune
from jaxprune._train_state import TrainState

__version__ = "0.1.0.dev0"

__all__ = (
    "FlipOutSchedule",
    "FlipOutState",
    "PruneState",
    "Sparsity",
    "TrainState",
    "criteria",
    "flip_counts",
    "flipout",
    "flipout_schedule",
    "flipout_sparsity",
    "masks_of",
    "prune",
    "schedules",
    "sparsity",
)
