"""configs/base.py: model presets, the exit section generated from ExitConfig, the shared
optimizer section, the threshold grid and the override guard."""

import dataclasses

import pytest

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.model.source import t5_config_from
from configs import base


def test_calm_preset_is_the_papers_model():
  model = t5_config_from(base.model_section("calm_t5_8l"))
  assert (model.num_layers, model.num_decoder_layers, model.d_model) == (8, 8, 512)
  assert (model.num_heads, model.d_kv, model.d_ff) == (6, 64, 1024)
  assert model.feed_forward_proj == "gated-gelu" and not model.tie_word_embeddings
  assert not model.scale_decoder_outputs and model.vocab_size == 32128


@pytest.mark.parametrize("preset,sizes,version", [
    ("t5_small", (512, 2048, 6, 8), "1.0"), ("t5_base", (768, 3072, 12, 12), "1.0"),
    ("t5_large", (1024, 4096, 24, 16), "1.0"), ("flan_t5_small", (512, 1024, 8, 6), "1.1"),
    ("flan_t5_base", (768, 2048, 12, 12), "1.1"), ("flan_t5_large", (1024, 2816, 24, 16), "1.1"),
    ("long_t5_local_base", (768, 2048, 12, 12), "1.1"),
    ("long_t5_tglobal_base", (768, 2048, 12, 12), "1.1"),
    ("long_t5_local_large", (1024, 2816, 24, 16), "1.1"),
    ("long_t5_tglobal_large", (1024, 2816, 24, 16), "1.1"),
])
def test_public_presets(preset, sizes, version, load_config):
  section = base.model_section(preset)
  assert set(section) == set(load_config("default").model)
  model = t5_config_from(section)
  assert (model.d_model, model.d_ff, model.num_layers, model.num_heads) == sizes
  assert model.num_decoder_layers == model.num_layers and model.d_kv == 64
  v1 = version == "1.0"
  assert (model.feed_forward_proj == "relu") == v1
  assert model.tie_word_embeddings == model.scale_decoder_outputs == v1
  assert base.MODEL_PRESETS[preset].hub_name
  attention = ("transient-global" if "_tglobal_" in preset else
               "local" if "_local_" in preset else "full")
  assert model.encoder_attention_type == attention
  assert (model.local_radius, model.global_block_size) == (127, 16)  # LongT5's, unused by T5


def test_unknown_preset_and_bad_grid_fail_clearly():
  with pytest.raises(ValueError, match="model preset 't5_huge' is unknown; allowed: calm_t5_8l"):
    base.model_section("t5_huge")
  with pytest.raises(ValueError, match="step must lie strictly between 0 and 1, got 0"):
    base.threshold_grid(0)


def test_exit_section_has_every_exit_option():
  section = base.exit_section()
  assert set(section) == {field.name for field in dataclasses.fields(ExitConfig)}
  defaults = ExitConfig()
  changed = {"threshold", "top_k"}  # 0.9 rather than 1.0; top_k as given
  for name in set(section) - changed:
    assert section[name] == getattr(defaults, name), name


def test_exit_section_is_exactly_exit_configs_fields_at_their_defaults():
  section = base.exit_section()
  names = [field.name for field in dataclasses.fields(ExitConfig)]
  assert sorted(section.keys()) == sorted(names)
  assert ExitConfig.from_section(section) == ExitConfig()
  for name in names:
    default = getattr(ExitConfig(), name)
    assert section[name] == default and type(section[name]) is type(default), name


def test_exit_section_swaps_in_values_and_refuses_unknown_fields():
  section = base.exit_section(threshold=0.9, tau=4.0, top_k=64)
  assert ExitConfig.from_section(section) == ExitConfig(threshold=0.9, tau=4.0, top_k=64)
  with pytest.raises(ValueError, match=r"no field\(s\) \['threshhold'\]"):
    base.exit_section(threshhold=0.9)


def test_optimizer_section_fills_the_shared_fields():
  section = base.optimizer_section(steps=10, batch_size=8, optimizer="adamw",
                                   learning_rate=1e-3, schedule="cosine", warmup_steps=2,
                                   checkpoint_every=5)
  assert section.to_dict() == {
      "steps": 10, "batch_size": 8, "optimizer": "adamw", "learning_rate": 1e-3,
      "schedule": "cosine", "warmup_steps": 2, "weight_decay": 0.0, "clip_norm": 1.0,
      "log_every": 100, "checkpoint_every": 5, "keep_checkpoints": 2,
      "async_checkpoints": True}


def test_threshold_grid():
  assert base.threshold_grid(0.05) == tuple(round(1.0 - 0.05 * i, 2) for i in range(20))
  grid = base.threshold_grid(0.025)
  assert len(grid) == 40 and grid[0] == 1.0 and grid[-1] == 0.025
  assert all(a > b for a, b in zip(grid, grid[1:]))


def test_override_refuses_fields_the_section_lacks():
  section = base.mesh_section()
  base.override(section, data=2)
  assert section.data == 2
  with pytest.raises(ValueError, match=r"no field\(s\) \['dat'\]; known: data, model, rules"):
    base.override(section, dat=2)
