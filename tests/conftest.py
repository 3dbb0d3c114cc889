"""Test-wide settings: strict promotion catches silent dtype and rank bugs."""

import jax
import hypothesis

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

hypothesis.settings.register_profile(
    "jaxprune", deadline=None, max_examples=40, derandomize=True
)
hypothesis.settings.load_profile("jaxprune")
