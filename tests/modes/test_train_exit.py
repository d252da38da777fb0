"""The train_exit mode: a classifier trained on the train mode's export and used by the
decode mode; its settings checked before the backbone loads."""

import os

import pytest

from calm_jax import modes
from calm_jax.exit_classifiers.storage import load_classifier
from calm_jax.modes import train_exit


def test_train_then_train_exit_modes_end_to_end(tmp_path, demo_config):
  config = demo_config()
  with config.unlocked():
    config.model.update(d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=3)
    config.train.update(steps=4, batch_size=8, num_examples=32, log_every=2,
                        checkpoint_every=2, warmup_steps=1)
    config.train_exit.update(steps=3, batch_size=8, log_every=1, checkpoint_every=3,
                             warmup_steps=0)
    config.mode = "train"
  export = modes.run(config, str(tmp_path))
  assert export == os.path.join(str(tmp_path), "model")
  with config.unlocked():
    config.mode = "train_exit"
    config.model.checkpoint = export
  saved = modes.run(config, str(tmp_path))
  assert load_classifier(saved, expected_name="meta_mlp").input_width == 16
  with config.unlocked():
    config.mode = "decode"
    config.exit.measure = "meta_mlp"
    config.exit.classifier_path = saved
  decoded = modes.run(config, str(tmp_path))
  assert os.path.getsize(decoded) > 0


@pytest.mark.parametrize("field, value, message", [
    ("classifier", "mlp", "unknown exit classifier 'mlp'"),
    ("labels", "oracle", "train_exit.labels='oracle' is not known"),
    ("steps", 0, "steps"),
])
def test_check_names_a_bad_value_before_the_backbone_loads(tmp_path, no_model_loading,
                                                           demo_config, field, value, message):
  config = demo_config()
  with config.unlocked():
    config.mode = "train_exit"
    config.train_exit[field] = value
  with pytest.raises(ValueError, match=message):
    train_exit.check(config, str(tmp_path))
  with pytest.raises(ValueError, match=message):
    modes.run(config, str(tmp_path))
  assert os.listdir(tmp_path) == []
