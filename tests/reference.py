"""Independent numpy references for the tests: sorting, not counting."""

from __future__ import annotations

import numpy as np


def keep_top_k(scores, alive, group_ids, kept, force_best=False):
  """Boolean masks keeping ``kept[g]`` entries of each group ``g``.

  Order: forced entries first, then surviving before pruned, then higher
  score (NaN below -inf; pruned entries all equal), then lower flat index
  within the group (arrays laid end to end in the order given).  With
  ``force_best`` the first surviving entry of highest score in every array
  is forced; forced entries rank equal among themselves.
  """
  scores = [np.asarray(s, np.float32).astype(np.float64) for s in scores]
  alive = [np.asarray(a, bool) for a in alive]
  out = [None] * len(scores)
  for g in sorted(set(group_ids)):
    members = [i for i, gid in enumerate(group_ids) if gid == g]
    flat_scores, flat_alive, flat_forced = [], [], []
    for i in members:
      # Ranks: NaN below -inf, pruned below NaN.
      s = np.where(np.isnan(scores[i]), -np.finfo(np.float64).max, scores[i])
      s = np.where(np.isneginf(scores[i]), -1e300, s).ravel()
      a = alive[i].ravel()
      forced = np.zeros(s.shape, bool)
      if force_best and a.any():
        candidates = np.where(a, s, -np.inf)
        best = np.flatnonzero(a & (candidates == candidates[a].max()))[0]
        forced[best] = True
      flat_scores.append(s)
      flat_alive.append(a)
      flat_forced.append(forced)
    s = np.concatenate(flat_scores)
    a = np.concatenate(flat_alive)
    f = np.concatenate(flat_forced)
    s = np.where(a, s, -np.inf)
    s = np.where(f, np.inf, s)  # forced entries are equal among themselves
    index = np.arange(s.size)
    order = np.lexsort((index, -s, ~a, ~f))
    keep = np.zeros(s.size, bool)
    keep[order[: kept[g]]] = True
    start = 0
    for i in members:
      n = scores[i].size
      out[i] = keep[start : start + n].reshape(scores[i].shape)
      start += n
  return out


def erk_densities_by_bisection(shapes, density):
  """ERK densities found by bisection on the scale factor (a second route)."""
  sizes = np.array([np.prod(s) for s in shapes], np.float64)
  raw = np.array([np.sum(s) for s in shapes], np.float64) / sizes
  target = density * sizes.sum()
  lo, hi = 0.0, 1.0 / raw.min()
  for _ in range(200):
    mid = (lo + hi) / 2
    if (np.minimum(1.0, mid * raw) * sizes).sum() < target:
      lo = mid
    else:
      hi = mid
  return np.minimum(1.0, hi * raw)
