"""configs/default.py: the embedded offline default every other config starts from."""

import dataclasses

from calm_jax.decoding.exit_rule import ExitConfig

# What the default (configs/demo.py before it became a name for default.py) held, written out.
VALUES = {
    "mode": "all", "seed": 0,
    "model.vocab_size": 259, "model.d_model": 64, "model.d_kv": 16, "model.d_ff": 128,
    "model.num_layers": 2, "model.num_decoder_layers": 6, "model.num_heads": 4,
    "model.feed_forward_proj": "gated-gelu", "model.tie_word_embeddings": False,
    "model.scale_decoder_outputs": False, "model.dropout_rate": 0.0, "model.dtype": "float32",
    "model.encoder_attention_type": "full", "model.local_radius": 127,
    "model.global_block_size": 16,
    "data.task": "generated", "data.vocabulary": "byte", "data.calibration_split": "validation",
    "data.test_split": "test", "data.num_examples": 4, "data.max_input_len": 49,
    "decode.max_decode_len": 25,
    "exit.measure": "softmax_diff", "exit.threshold": 0.9, "exit.tau": 0.0,
    "exit.decay": "paper", "exit.top_k": 64, "exit.min_top_k": 10, "exit.classifier_path": "",
    "exit.decoding": "per_token", "exit.shallow_exit_layer": 1, "exit.max_pending": 4,
    "exit.rollback_threshold": float("inf"), "exit.verify": False,
    "exit.adaptive_threshold": "none", "exit.adaptive_target": 0.9, "exit.adaptive_max_refits": 10,
    "calibration.num_examples": 200, "calibration.similarity": "string_match",
    "calibration.epsilon": 0.1, "calibration.deltas": (0.05, 0.1, 0.2, 0.3),
    "calibration.objective": "textual", "calibration.batch_size": 0,
    "calibration.calibration_fraction": 0.8,
    "train.split": "train", "train.num_examples": 20000, "train.steps": 1500,
    "train.batch_size": 64, "train.optimizer": "adamw", "train.learning_rate": 3e-3,
    "train.schedule": "cosine", "train.warmup_steps": 100, "train.weight_decay": 0.0,
    "train.clip_norm": 1.0, "train.layer_weighting": "calm", "train.label_smoothing": 0.0,
    "train.z_loss": 0.0, "train.log_every": 100, "train.checkpoint_every": 500,
    "train.objective": "anytime", "train.kd_weight": 1.0, "train.kd_mapping": "last",
    "train.kd_linear_map": False,
    "train.keep_checkpoints": 2, "train.async_checkpoints": True,
    "train_exit.classifier": "meta_mlp", "train_exit.hidden_width": 0,
    "train_exit.lstm_layers": 2, "train_exit.width": 64, "train_exit.num_heads": 4,
    "train_exit.labels": "consistent", "train_exit.balancing": "class_weights",
    "train_exit.loss": "cross_entropy", "train_exit.steps": 300, "train_exit.batch_size": 64,
    "train_exit.optimizer": "adamw", "train_exit.learning_rate": 3e-3,
    "train_exit.schedule": "cosine", "train_exit.warmup_steps": 50,
    "train_exit.weight_decay": 0.0, "train_exit.clip_norm": 1.0, "train_exit.log_every": 100,
    "train_exit.checkpoint_every": 300, "train_exit.keep_checkpoints": 2,
    "train_exit.async_checkpoints": True,
    "mesh.data": -1, "mesh.model": 1,
    "generate.input_file": "", "generate.batch_size": 8, "generate.input_prefix": "",
    "evaluate.measures": ("softmax_diff", "state_saturation", "meta_mlp"),
    "evaluate.rule": "ltt_hoeffding_bentkus", "evaluate.num_examples": 200,
    "evaluate.static_layers": (1, 2), "evaluate.timing_rounds": 7,
    "evaluate.latency_examples": 32, "evaluate.free": False,
    "analysis.num_examples": 32, "analysis.batch_size": 0, "analysis.after_layers": (0, 1, 2),
    "analysis.similarity": "exact_match",
}


def field(config, path):
  for key in path.split("."):
    config = config[key]
  return config


def test_default_values_are_the_ones_before_the_restructure(load_config):
  config = load_config("default")
  for path, value in VALUES.items():
    assert field(config, path) == value, path
    assert type(field(config, path)) is type(value), path
  grid = config.calibration.thresholds
  assert grid[:9] == (1.0, 0.999, 0.995, 0.99, 0.98, 0.97, 0.96, 0.95, 0.9)
  assert len(grid) == 26 and grid[-1] == 0.05


def test_default_sections(load_config):
  config = load_config("default")
  assert set(config) == {"mode", "seed", "memory_check", "model", "data", "decode", "exit",
                         "calibration", "train", "train_exit", "mesh", "generate", "evaluate",
                         "analysis"}
  assert set(config.exit) == {field.name for field in dataclasses.fields(ExitConfig)}
  shared = set(config.train) & set(config.train_exit)
  assert shared == {"steps", "batch_size", "optimizer", "learning_rate", "schedule",
                    "warmup_steps", "weight_decay", "clip_norm", "log_every",
                    "checkpoint_every", "keep_checkpoints", "async_checkpoints"}


def test_default_passes_the_setting_checks(load_config, check_settings):
  check_settings(load_config("default"))


def test_default_is_locked_when_parsed(parse_config):
  config = parse_config("default", "--config.decode.max_decode_len=32")
  assert config.is_locked and config.decode.max_decode_len == 32
