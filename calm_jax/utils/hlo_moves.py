"""Data moves inside a compiled decoder's token loop, read from XLA's optimized HLO text.

Per-token work that grows with a cache, the parameters or a measure's store shows up in the
optimized HLO (`jax.jit(f).lower(...).compile().as_text()`) as an instruction that only
moves data: a copy, transpose, slice, gather, concatenation, ... outside any fusion, a
fusion made of nothing else (a slice of a stacked cache fused with a bitcast still writes
a buffer of its own), or a copy or transpose of an operand inside a product's fusion (a
kernel re-laid for its product at every call). `loop_copies` lists those inside the token
loop (the while loop that reaches the most computations: its layer loop or the unrolled
layers' conditionals, the switch branches) with their sizes; bench/loop_copies.py prints
them for a model shape and measure, and the decoder's tests assert there are none of cache
size.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

BYTES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "bf16": 2, "f16": 2, "s64": 8, "u8": 1}
# Instructions that only move data: outside a fusion each one writes a new buffer.
MOVES = ("copy", "transpose", "dynamic-slice", "slice", "gather", "concatenate", "pad",
         "broadcast", "reverse")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\][^ ]* "
                         r"(" + "|".join(MOVES) + r")\(")
FUSION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\][^ ]* fusion\(.*"
                    r"calls=%?([\w.\-]+)")
# A copy or transpose inside a fused computation: (dtype, shape, op).
INNER_MOVE = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (\w+)\[([\d,]*)\][^ ]* "
                        r"(copy|transpose)\(")
FUSED_OP = re.compile(r"=\s*[^ ]+\s+([a-z\-]+)\(")
# Operations inside a fused computation that neither compute nor move data themselves.
PLUMBING = {"parameter", "constant", "bitcast", "reshape", "tuple", "get-tuple-element"}
COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
CALLS = re.compile(r"(?:body|condition|to_apply|calls)=%?([\w.\-]+)"
                   r"|branch_computations=\{([^}]*)\}")


def computations(hlo: str) -> Dict[str, List[str]]:
  """{name: [lines]} of every computation in an HLO module's text."""
  out, name = {}, None
  for line in hlo.splitlines():
    found = COMPUTATION.match(line)
    if found and not line.startswith(" "):
      name = found.group(1)
      out[name] = []
    elif name is not None:
      out[name].append(line)
  return out


def callees(lines):
  for line in lines:
    for single, branches in CALLS.findall(line):
      names = [single] if single else [b.strip().lstrip("%") for b in branches.split(",")]
      yield from (n for n in names if n)


def token_loop_computations(comps: Dict[str, List[str]]) -> Set[str]:
  """Names of the computations the token loop runs (its body and everything that body
  calls), fused computations left out. The token loop is the while loop that reaches the
  most computations (its layer loop, conditionals and switch branches): the encoder's
  and the cache set-up's loops reach a handful."""
  def reachable(start):
    seen, todo = set(), [start]
    while todo:
      name = todo.pop()
      if name in seen or name not in comps:
        continue
      seen.add(name)
      todo.extend(callees(comps[name]))
    return seen

  bodies = [m.group(1) for lines in comps.values() for line in lines
            for m in [re.search(r" while\(.*body=%?([\w.\-]+)", line)] if m]
  if not bodies:
    return set()
  outer = max(bodies, key=lambda body: len(reachable(body)))
  return {name for name in reachable(outer) if not name.startswith("fused")}


def _moving_fusion(comps, fused: str) -> Optional[str]:
  """The data moves a fused computation is made of ('slice', 'copy+transpose', ...), or
  None when it also computes (or updates a buffer in place: dynamic-update-slice)."""
  ops = {m.group(1) for line in comps.get(fused, []) for m in [FUSED_OP.search(line)] if m}
  if not ops or not ops <= set(MOVES) | PLUMBING:
    return None
  moves = sorted(ops & set(MOVES))
  return "+".join(moves) if moves else "copy"


def _size(dtype: str, shape: str) -> int:
  """Bytes of an HLO array type, e.g. ('f32', '4,8') -> 128."""
  dims = [int(x) for x in shape.split(",") if x]
  return int(np.prod(dims or [1])) * BYTES.get(dtype, 4)


def _relayout_into_product(comps, fused: str, min_bytes: int):
  """(bytes, kind, dtype[shape]) of the largest copy or transpose of >= min_bytes that a
  fused computation holding a product (dot) makes of an operand, or None: a kernel stored
  in one layout and multiplied in another is re-laid at every call, inside the product's
  fusion ('copy_dot_fusion'), where the move-only scan does not look."""
  lines = comps.get(fused, [])
  if not any(" dot(" in line for line in lines):
    return None
  moves = [m for m in map(INNER_MOVE.match, lines) if m]
  found = [(_size(m.group(1), m.group(2)), f"fusion({m.group(3)}+dot)",
            f"{m.group(1)}[{m.group(2)}]") for m in moves]
  found = [entry for entry in found if entry[0] >= min_bytes]
  return max(found) if found else None


def loop_copies(hlo: str, min_bytes: int) -> List[Tuple[int, str, str, str]]:
  """[(bytes, kind, dtype[shape], computation)] of data moves in the token loop: move
  instructions, fusions that only move data (a slice of a stacked cache fused with a
  bitcast writes a buffer all the same), and re-layouts of a product's operand fused into
  the product (their own size, not the fusion's output's)."""
  comps = computations(hlo)
  found = []
  for name in sorted(token_loop_computations(comps)):
    for line in comps[name]:
      match, kind = INSTRUCTION.match(line), None
      if match:
        kind = match.group(4)
      else:
        match = FUSION.match(line)
        kind = match and _moving_fusion(comps, match.group(4))
        kind = kind and f"fusion({kind})"
        relaid = match and not kind and _relayout_into_product(comps, match.group(4),
                                                                 min_bytes)
        if relaid:
          found.append(relaid + (name,))
          continue
      if kind:
        size = _size(match.group(2), match.group(3))
        if size >= min_bytes:
          found.append((size, kind, f"{match.group(2)}[{match.group(3)}]", name))
  return sorted(found, reverse=True)
