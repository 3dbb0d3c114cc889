"""Schedules: values against the formulas, jit, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import schedules

pytestmark = pytest.mark.usefixtures("strict_dtypes")


def test_polynomial_matches_zhu_gupta():
  s = schedules.polynomial(0.8, begin_step=10, end_step=75, frequency=20,
                           initial_sparsity=0.1, power=3)
  assert s.steps == (10, 30, 50, 70, 75)
  for t, got in zip(s.steps, s.sparsities):
    want = 0.8 + (0.1 - 0.8) * (1 - (t - 10) / 65) ** 3
    assert got == pytest.approx(want, abs=1e-15)
  assert s.sparsities[-1] == 0.8


def test_polynomial_is_piecewise_constant_in_the_step():
  s = schedules.polynomial(0.9, begin_step=0, end_step=300, frequency=100)
  steps = jnp.arange(0, 400)
  values = np.asarray(jax.jit(s)(steps))
  assert np.all(values[:100] == 0)
  np.testing.assert_allclose(values[100:200], s.sparsities[0], rtol=1e-6)
  np.testing.assert_allclose(values[300:], 0.9, rtol=1e-6)
  assert np.all(np.diff(values) >= 0)
  levels = np.asarray(s.level(steps))
  assert levels[99] == -1 and levels[100] == 0 and levels[399] == 2


def test_one_shot_and_constant():
  one = schedules.one_shot(0.7, at_step=5)
  assert one.steps == (5,) and one.sparsities == (0.7,)
  assert float(one(4)) == 0.0
  assert float(one(5)) == pytest.approx(0.7)
  const = schedules.constant(0.3)
  assert const.steps == (0,)
  assert schedules.constant(0.0).steps == ()
  assert float(schedules.constant(0.0)(10)) == 0.0


def test_piecewise_drops_levels_that_change_nothing():
  s = schedules.piecewise([0, 5, 10, 20], [0.0, 0.5, 0.5, 0.9])
  assert s.steps == (5, 20) and s.sparsities == (0.5, 0.9)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: schedules.constant(1.5), r"sparsity must be in \[0, 1\]"),
        (lambda: schedules.constant(-0.1), r"sparsity must be in \[0, 1\]"),
        (lambda: schedules.constant(float("nan")), r"in \[0, 1\], got nan"),
        (lambda: schedules.one_shot(0.5, at_step=-1), "at_step must be >= 0"),
        (lambda: schedules.polynomial(0.9, 100, 100, 10), "end_step .* greater"),
        (lambda: schedules.polynomial(0.9, 100, 50, 10), "end_step .* greater"),
        (lambda: schedules.polynomial(0.9, 0, 50, 0), "frequency must be >= 1"),
        (lambda: schedules.polynomial(1.2, 0, 50, 10), "final_sparsity"),
        (lambda: schedules.polynomial(0.5, 0, 50, 10, initial_sparsity=0.6),
         "initial_sparsity .* must not exceed"),
        (lambda: schedules.polynomial(0.5, 0, 50, 10, power=0), "power"),
        (lambda: schedules.piecewise([0, 0], [0.1, 0.2]), "strictly increasing"),
        (lambda: schedules.piecewise([0, 1], [0.5, 0.2]), "must not decrease"),
        (lambda: schedules.piecewise([0], [0.5, 0.6]), "got 1 step but 2 sparsities"),
    ],
)
def test_bad_input_raises_value_error(make, message):
  with pytest.raises(ValueError, match=message):
    make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: schedules.constant("0.5"),
        lambda: schedules.one_shot(0.5, at_step=1.5),
        lambda: schedules.polynomial(0.5, 0, 10, 2.0),
    ],
)
def test_bad_types_raise_type_error(make):
  with pytest.raises(TypeError):
    make()
