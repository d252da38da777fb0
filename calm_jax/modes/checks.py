"""Type checks shared by the settings checks of several modes: a config value must be a
real number or an integer, and a bool is neither."""

from __future__ import annotations

import numbers


def is_number(value) -> bool:
  """A real number that is not a bool."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value) -> bool:
  """An integer that is not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)
