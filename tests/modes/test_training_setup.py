"""What the two training modes share (calm_jax.modes.training_setup): the training examples
from either task registry, and the loop, optimizer and mesh settings checked."""

import pytest

from calm_jax.data import byte_vocab
from calm_jax.modes.context import run_context
from calm_jax.modes.training_setup import training_data, training_setup


def test_training_data_from_a_seqio_task(task_config):
  pytest.importorskip("seqio")
  data = {name: training_data(run_context(task_config(name), ""), byte_vocab.VOCAB_SIZE)
          for name in ("generated", "calm_generated")}
  with_seqio, plain = data["calm_generated"], data["generated"]
  assert with_seqio.inputs.shape == plain.inputs.shape and plain.inputs.shape[0] == 8
  assert (with_seqio.inputs == plain.inputs).all() and (with_seqio.targets == plain.targets).all()


@pytest.mark.parametrize("section, field, value, message", [
    ("train", "optimizer", "sgdd", "sgdd"),
    ("mesh", "rules", (("embed", "tensor"),), "mesh.rules maps 'embed' to 'tensor', which is "
                                               "no mesh axis"),
])
def test_training_setup_names_a_bad_value(section, field, value, message, task_config):
  config = task_config("generated")
  with config.unlocked():
    config[section][field] = value
  with pytest.raises(ValueError, match=message):
    training_setup(config.train, config)


@pytest.mark.parametrize("name, field, value, message", [
    ("train", "steps", 0, r"^train.steps must be >= 1, got 0$"),
    ("train_exit", "steps", 0, r"^train_exit.steps must be >= 1, got 0$"),
    ("train_exit", "log_every", 0, r"^train_exit.log_every must be a positive integer, got 0$"),
    ("train_exit", "learning_rate", 0.0, r"^train_exit.learning_rate must be > 0, got 0.0$"),
])
def test_a_bad_loop_or_optimizer_value_names_its_section(name, field, value, message,
                                                         task_config):
  config = task_config("generated")
  with config.unlocked():
    config[name][field] = value
  with pytest.raises(ValueError, match=message):
    training_setup(config[name], config, name)
