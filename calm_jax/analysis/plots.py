"""Shared plotting helpers: figure grids, legends and atomic PNG writes.

Figures are plain `matplotlib.figure.Figure` objects rendered by the Agg canvas when saved:
no pyplot, so nothing here changes the caller's matplotlib backend or keeps figures alive.
matplotlib is imported on first use, so importing a study costs nothing until it plots.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from calm_jax.utils import files
from calm_jax.analysis.layerwise import SETTING_LABELS


def color(index: int) -> str:
  """The index-th colour of matplotlib's default cycle (one per model)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  return cycle[index % len(cycle)]


def figure_grid(rows: int, cols: int, panel_size: Tuple[float, float] = (6.0, 5.5)):
  """A figure and its axes as a [rows][cols] list of lists."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows))
  axes = figure.subplots(rows, cols, squeeze=False)
  return figure, [list(row) for row in axes]


def setting_title(setting: str) -> str:
  """A panel title on two lines: the setting, then what the decoder read."""
  name, _, detail = SETTING_LABELS[setting].partition(" (")
  return f"{name.capitalize()}\n({detail}"


def layer_ticks(axis, num_layers: int) -> None:
  """Integer ticks 1..L on the x axis."""
  step = max(1, num_layers // 12)
  axis.set_xticks(np.arange(1, num_layers + 1, step))


def legend_below(axis, handles: Optional[list] = None) -> None:
  """A small legend under the panel, where it never hides the data."""
  kwargs = {"handles": handles} if handles is not None else {}
  axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), **kwargs)


def finish(figure, title: str, axes: Sequence) -> None:
  """Grid lines, legends under the panels and the overall title."""
  for axis in axes:
    axis.grid(alpha=0.3)
    legend_below(axis)
  figure.suptitle(title)
  figure.tight_layout()


def save_figure(figure, path: str) -> None:
  """Writes the figure as PNG through a temporary file and a rename."""
  files.replace_atomically(path, lambda temporary: figure.savefig(temporary, dpi=110,
                                                                 format="png"))
