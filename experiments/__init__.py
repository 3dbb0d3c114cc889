"""Experiments reproducing the papers' claims; run from the repository root."""
