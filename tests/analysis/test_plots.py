"""Every study's figure (the shared helpers of calm_jax.analysis.plots): titles, axis
labels, legends and PNG writes, on hand-made arrays."""

import os

from calm_jax.analysis import (accuracy, confidence, layerwise, oracle, plots, rank,
                               saturation, stability)


def two_models(study_result):
  return {name: {s: study_result for s in layerwise.SETTINGS} for name in ("plain", "calm")}


def study_figures(layered, saturation_example, decodes):
  """Every study's figure for two models, from the studies' hand-made arrays."""
  top1, mask = layered([[5, 5, 5], [1, 5, 5], [1, 2, 3]])
  prob, _ = layered([[0.2, 0.5, 0.9], [0.6, 0.3, 0.8], [0.3, 0.3, 0.2]])
  similarity, sat_mask = saturation_example()
  settings = list(layerwise.SETTINGS)
  full, copy, true_cache = decodes()
  oracle_result = oracle.oracle_study(full, [copy, true_cache], ["ab", "x"], num_layers=4,
                                      similarity="exact_match")
  return {
      "stability": stability.figure(two_models(stability.stability_study(top1, mask)),
                                    settings),
      "confidence": confidence.figure(two_models(confidence.confidence_study(
          prob, mask, [0, 1])), settings),
      "rank": rank.figure(two_models(rank.rank_study(top1, mask, [1, 2])), settings),
      "accuracy": accuracy.figure(two_models(accuracy.accuracy_study(
          top1, prob, top1[-1], mask, 5, prob, "softmax_max")), settings),
      "saturation": saturation.figure(two_models(saturation.saturation_study(
          similarity, sat_mask, threshold=0.8, num_easy=1, num_difficult=1,
          after_layers=[0])), settings),
      "oracle": oracle.figure({"plain": oracle_result, "calm": oracle_result}),
  }


def test_every_panel_has_a_title_axis_labels_and_a_legend_naming_each_model(
    tmp_path, layered, saturation_example, decodes):
  for study, figure in study_figures(layered, saturation_example, decodes).items():
    assert figure.get_suptitle(), study
    for axis in figure.get_axes():
      assert axis.get_title() and axis.get_xlabel() and axis.get_ylabel(), study
      labels = [t.get_text() for t in axis.get_legend().get_texts()]
      if study == "saturation":  # one model per row: the title names it
        assert any(name in axis.get_title() for name in ("plain", "calm"))
        assert any(label.startswith("easy") for label in labels)
      elif study == "oracle":  # models on the x axis, one bar per decode in the legend
        assert [t.get_text() for t in axis.get_xticklabels()] == ["plain", "calm"]
        assert labels == list(oracle.DECODES.values())
      else:
        assert any(label.startswith("plain") for label in labels), (study, labels)
        assert any(label.startswith("calm") for label in labels), (study, labels)
    path = tmp_path / f"{study}.png"
    plots.save_figure(figure, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(tmp_path)) == sorted(f"{s}.png" for s in study_figures(
      layered, saturation_example, decodes))


def test_panel_titles_say_which_inputs_they_show(layered, saturation_example, decodes):
  figure = study_figures(layered, saturation_example, decodes)["stability"]
  titles = [axis.get_title() for axis in figure.get_axes()]
  assert titles[0].startswith("Teacher-forced") and "reference" in titles[0]
  assert titles[1].startswith("Free-running") and "own greedy outputs" in titles[1]
