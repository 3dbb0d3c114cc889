"""jaxprune.sharing storage: the canonical Huffman coder, exact round trips
of shared params, files, and each stage's bytes against counts from first
principles."""

import heapq
import io
import math

import jax
import numpy as np
import pytest
from flax import nnx

import jaxprune
from jaxprune import _sharing_huffman as huffman
from jaxprune import sharing


def _optimal_cost(counts) -> int:
  """The bits of an optimal prefix code (Huffman's merge cost), from the
  counts alone; 1 bit per symbol for a single symbol."""
  counts = [int(c) for c in counts if c]
  if len(counts) == 1:
    return counts[0]
  heapq.heapify(counts)
  cost = 0
  while len(counts) > 1:
    merged = heapq.heappop(counts) + heapq.heappop(counts)
    cost += merged
    heapq.heappush(counts, merged)
  return cost


@pytest.mark.parametrize("seed", range(30))
def test_huffman_round_trip_and_optimal_length(seed):
  rng = np.random.default_rng(seed)
  k = int(rng.integers(1, 40))
  symbols = rng.choice(k, size=int(rng.integers(0, 400)), p=rng.dirichlet(np.ones(k) * 0.3))
  counts = np.bincount(symbols, minlength=k)
  lengths = huffman.code_lengths(counts)
  assert sum(2.0 ** -int(n) for n in lengths if n) <= 1.0
  packed = huffman.encode(symbols, lengths)
  assert huffman.encoded_bits(symbols, lengths) == (_optimal_cost(counts) if symbols.size else 0)
  assert packed.size == math.ceil(huffman.encoded_bits(symbols, lengths) / 8)
  np.testing.assert_array_equal(huffman.decode(packed, lengths, symbols.size), symbols)


def test_huffman_codes_are_canonical_and_prefix_free():
  lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4], np.uint8)  # RFC 1951's example
  codes = huffman.canonical_codes(lengths)
  assert [format(int(c), f"0{n}b") for c, n in zip(codes, lengths)] == [
      "010", "011", "100", "101", "110", "00", "1110", "1111"]


def test_huffman_decode_refuses_damage():
  symbols = np.array([0, 1, 2, 2, 2])
  lengths = huffman.code_lengths(np.bincount(symbols))
  packed = huffman.encode(symbols, lengths)
  with pytest.raises(huffman.CorruptStream):
    huffman.decode(packed, lengths, 40)
  with pytest.raises(huffman.CorruptStream):
    huffman.decode(np.concatenate([packed, [0]]).astype(np.uint8), lengths, 5)
  with pytest.raises(huffman.CorruptStream, match="Kraft"):
    huffman.decode(packed, np.array([1, 1, 1], np.uint8), 5)


def test_gap_symbols_from_first_principles():
  rng = np.random.default_rng(0)
  mask = rng.random(500) < 0.05
  for gap_bits in (1, 2, 3, 5, 8):
    filler, symbols, run = 2**gap_bits - 1, [], 0
    for kept in mask:  # one weight at a time
      if not kept:
        run += 1
        if run == filler:
          symbols.append(filler)
          run = 0
      else:
        symbols.append(run)
        run = 0
    while symbols and symbols[-1] == filler:  # nothing after the last kept
      symbols.pop()
    assert sharing.gap_symbols(mask, gap_bits).tolist() == symbols


def _model(seed=0, sparsity=0.9):
  rng = np.random.default_rng(seed)
  params = {"conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
                     "bias": rng.normal(size=8).astype(np.float32)},
            "dense": {"kernel": rng.normal(size=(72, 30)).astype(np.float32),
                      "bias": rng.normal(size=30).astype(np.float32)}}
  masks = jaxprune.prune_once(params, sparsity=sparsity)
  return params, masks


def _same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert np.array_equal(x.view(np.uint8), y.view(np.uint8))


@pytest.mark.parametrize("huffman_coded", [True, False])
@pytest.mark.parametrize("gap_bits", [None, 1, 3, 8])
def test_round_trip_is_exact(huffman_coded, gap_bits):
  params, masks = _model()
  shared = sharing.codebooks(params, masks, bits=lambda p, x: 3 if x.ndim == 4 else 5)
  packed = sharing.compress(shared, huffman=huffman_coded, gap_bits=gap_bits)
  back = sharing.decompress(packed)
  for path in (("conv", "kernel"), ("dense", "kernel")):
    a = shared.codebooks[path[0]][path[1]]
    b = back.codebooks[path[0]][path[1]]
    _same(a, b)
  _same(sharing.shared_params(back), sharing.shared_params(shared))
  file = io.BytesIO()
  sharing.save(file, packed)
  file.seek(0)
  _same(sharing.shared_params(sharing.decompress(sharing.load(file))),
        sharing.shared_params(shared))


def test_round_trip_of_an_empty_and_a_full_leaf_and_nnx():
  params = {"a": np.ones((4, 5), np.float32), "b": np.arange(6.0, dtype=np.float32).reshape(2, 3)}
  masks = {"a": np.zeros((4, 5), bool), "b": np.ones((2, 3), bool)}
  shared = sharing.codebooks(params, masks, bits=2)
  _same(sharing.shared_params(sharing.decompress(sharing.compress(shared))),
        sharing.shared_params(shared))
  model = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
  shared = sharing.codebooks(model, jaxprune.prune_once(model, sparsity=0.5), bits=2)
  _same(sharing.shared_params(sharing.decompress(sharing.compress(shared))),
        sharing.shared_params(shared))


def _csr_bytes(mask, itemsize=4):
  """jaxprune.export's CSR from first principles: per row, one entry per kept
  weight plus a filler per 256 skipped columns; a value and a byte each;
  uint32 row pointers."""
  rows = mask.reshape(-1, mask.shape[-1])
  entries = 0
  for row in rows:
    previous = -1
    for column in np.flatnonzero(row):
      entries += 1 + (column - previous - 1) // 256
      previous = column
  return entries * (itemsize + 1) + (rows.shape[0] + 1) * 4


def test_size_report_matches_first_principles():
  params, masks = _model(1)
  bits = {"conv": 3, "dense": 5}
  shared = sharing.codebooks(params, masks, bits=lambda p, x: bits[p[0]])
  report = sharing.size_report(shared)
  rows = {}
  for layer in ("conv", "dense"):
    book = shared.codebooks[layer]["kernel"]
    mask = np.asarray(masks[layer]["kernel"])
    indices = np.asarray(book.indices)[mask]
    gap_bits = 8 if layer == "conv" else 5
    symbols = sharing.gap_symbols(mask, gap_bits)  # checked above
    k = 2 ** bits[layer]
    kept, entries = int(mask.sum()), symbols.size
    fixed = 4 * k + math.ceil(kept * bits[layer] / 8) + math.ceil(entries * gap_bits / 8)
    coded = (4 * k + k + 2**gap_bits
             + math.ceil(_optimal_cost(np.bincount(indices, minlength=k)) / 8)
             + math.ceil(_optimal_cost(np.bincount(symbols)) / 8))
    rows[f"{layer}/kernel"] = (4 * mask.size, _csr_bytes(mask), fixed, coded)
    bias = params[layer]["bias"].size * 4
    rows[f"{layer}/bias"] = (bias, bias, bias, bias)
  got = {leaf.path: leaf.nbytes for leaf in report.leaves}
  assert got == rows
  totals = [sum(r[i] for r in rows.values()) for i in range(4)]
  assert [s.nbytes for s in report.stages] == totals
  assert [s.name for s in report.stages] == list(sharing.STAGES)
  for stage, total in zip(report.stages, totals):
    assert stage.rate == pytest.approx(totals[0] / total)
  assert "| compression rate |" in str(report)


def test_damage_is_reported_with_the_leaf():
  params, masks = _model(2)
  packed = sharing.compress(sharing.codebooks(params, masks, bits=2))
  leaf = packed.leaves[1]  # conv/kernel
  arrays = dict(leaf.arrays, gaps=leaf.arrays["gaps"][:-1])
  broken = packed._replace(leaves=(packed.leaves[0], leaf._replace(arrays=arrays),
                                   *packed.leaves[2:]))
  with pytest.raises(ValueError, match="conv/kernel .* was the file damaged"):
    sharing.decompress(broken)
  with pytest.raises(ValueError, match="gap_bits for conv/kernel must be"):
    sharing.compress(sharing.codebooks(params, masks, bits=2), gap_bits=0)
  file = io.BytesIO()
  np.savez(file, x=np.zeros(1))
  file.seek(0)
  with pytest.raises(ValueError, match="not written by jaxprune.sharing.save"):
    sharing.load(file)
