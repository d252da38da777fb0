"""The last conversion of a parameter tree per key, reused while the same arrays come back.

Decoding the same parameters again (a threshold grid's waves, evaluate's timing rounds)
must not copy or re-place them again. An entry is keyed by the identity of the input's
leaves and keeps them alive, so no id is reused while the entry exists. By default only
trees of `jax.Array` leaves (immutable) are kept; `arrays_only=False` also keeps trees of
host arrays, which their owner must then not change in place. A conversion that returns
its input itself (a tree already in the wanted form) is not kept: there is nothing to
reuse, and keeping it would evict the entry of a real conversion (decoding one device's
per-layer copy would otherwise make the next decode of the stacked original convert it
again).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

import jax


class ConversionCache:
  """convert(tree, key) computed once per (tree's arrays, key); `keep` entries at most
  (the most recent ones)."""

  def __init__(self, convert: Callable[[Any, Hashable], Any], keep: int = 8,
               arrays_only: bool = True):
    self._convert = convert
    self._keep = keep
    self._arrays_only = arrays_only
    self._entries = {}  # key -> (input leaves, converted tree)

  def get(self, tree: Any, key: Hashable) -> Any:
    leaves = jax.tree.leaves(tree)
    entry = self._entries.get(key)
    if entry is not None and len(entry[0]) == len(leaves) and all(
        a is b for a, b in zip(entry[0], leaves)):
      return entry[1]
    converted = self._convert(tree, key)
    if converted is tree:
      return converted
    if not self._arrays_only or all(isinstance(leaf, jax.Array) for leaf in leaves):
      self._entries.pop(key, None)
      self._entries[key] = (leaves, converted)
      while len(self._entries) > self._keep:
        self._entries.pop(next(iter(self._entries)))
    return converted
