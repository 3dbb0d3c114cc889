"""jaxprune: functional neural-network pruning for JAX, as optax transformations."""

from jaxprune import criteria
from jaxprune import export
from jaxprune import projections
from jaxprune import schedules
from jaxprune import scores
from jaxprune import sharing
from jaxprune import structures
from jaxprune._constraints import DualAscentState
from jaxprune._constraints import density_constraint
from jaxprune._constraints import dual_ascent
from jaxprune._constraints import l0_penalty
from jaxprune._dependence import Dependence
from jaxprune._dependence import DependenceSchedule
from jaxprune._dependence import LayerDependence
from jaxprune._dependence import dependence_schedule
from jaxprune._dependence import linear_dependence
from jaxprune._dependence import node_weight_masks
from jaxprune._dependence import unit_activations
from jaxprune._flipout import FlipOutSchedule
from jaxprune._flipout import FlipOutState
from jaxprune._flipout import flip_counts
from jaxprune._flipout import flipout
from jaxprune._flipout import flipout_schedule
from jaxprune._flipout import flipout_sparsity
from jaxprune._hfp import OptiCut
from jaxprune._hfp import OptiCutRound
from jaxprune._hfp import information_gain
from jaxprune._hfp import opti_cut
from jaxprune._imp import ImpResult
from jaxprune._imp import Round
from jaxprune._imp import RoundRecord
from jaxprune._imp import Trained
from jaxprune._imp import imp
from jaxprune._inspect import Sparsity
from jaxprune._inspect import masks_of
from jaxprune._inspect import replace_masks
from jaxprune._inspect import sparsity
from jaxprune._l0 import Density
from jaxprune._l0 import add_gates
from jaxprune._l0 import apply_gates
from jaxprune._l0 import clip_log_alpha
from jaxprune._l0 import expected_density
from jaxprune._l0 import expected_l0
from jaxprune._l0 import gate_labels
from jaxprune._l0 import hard_masks
from jaxprune._latency import LatencyTable
from jaxprune._latency import latency_table
from jaxprune._latency import median_latency
from jaxprune._masks import apply_masks
from jaxprune._packing import PackedMask
from jaxprune._paths import Connectivity
from jaxprune._paths import connectivity
from jaxprune._paths import synflow
from jaxprune._projections import ProjectionState
from jaxprune._projections import project_l1
from jaxprune._projections import project_l11
from jaxprune._projections import project_l21
from jaxprune._prune_once import prune_once
from jaxprune._pruning import PruneState
from jaxprune._pruning import prune
from jaxprune._snip import grasp
from jaxprune._snip import snip
from jaxprune._snip import snip_it
from jaxprune._structured import Shrunk
from jaxprune._structured import mask_nodes
from jaxprune._structured import shrink
from jaxprune._structured import snap_it
from jaxprune._train_state import TrainState
from jaxprune._voting import LayerVotes
from jaxprune._voting import VotePruning
from jaxprune._voting import VoteSchedule
from jaxprune._voting import add_votes
from jaxprune._voting import neuron_votes
from jaxprune._voting import prune_by_votes
from jaxprune._voting import vote_schedule

__version__ = "0.1.0"

__all__ = (
    "Connectivity",
    "Density",
    "Dependence",
    "DependenceSchedule",
    "DualAscentState",
    "FlipOutSchedule",
    "FlipOutState",
    "ImpResult",
    "LatencyTable",
    "LayerDependence",
    "LayerVotes",
    "OptiCut",
    "OptiCutRound",
    "PackedMask",
    "ProjectionState",
    "PruneState",
    "Round",
    "RoundRecord",
    "Shrunk",
    "Sparsity",
    "TrainState",
    "Trained",
    "VotePruning",
    "VoteSchedule",
    "add_gates",
    "add_votes",
    "apply_masks",
    "apply_gates",
    "clip_log_alpha",
    "connectivity",
    "criteria",
    "density_constraint",
    "dependence_schedule",
    "dual_ascent",
    "expected_density",
    "expected_l0",
    "export",
    "flip_counts",
    "flipout",
    "flipout_schedule",
    "flipout_sparsity",
    "gate_labels",
    "grasp",
    "hard_masks",
    "imp",
    "information_gain",
    "l0_penalty",
    "latency_table",
    "linear_dependence",
    "mask_nodes",
    "masks_of",
    "median_latency",
    "neuron_votes",
    "node_weight_masks",
    "opti_cut",
    "project_l1",
    "project_l11",
    "project_l21",
    "projections",
    "prune",
    "prune_by_votes",
    "prune_once",
    "replace_masks",
    "schedules",
    "scores",
    "sharing",
    "shrink",
    "snap_it",
    "snip",
    "snip_it",
    "sparsity",
    "structures",
    "synflow",
    "unit_activations",
    "vote_schedule",
)
