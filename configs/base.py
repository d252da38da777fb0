"""Shared building blocks of the run configs: each function returns one whole section.

default.py builds the embedded default from these sections; dataset.py starts from it and
swaps in other sections, so every config has the same keys (tests/configs/ pins this):

  model_section(preset)     T5 sizes of a named checkpoint family (MODEL_PRESETS)
  exit_section(**values)    every ExitConfig field at its default (calm_jax.decoding.exit_rule)
  optimizer_section(...)    the optimizer and loop fields of the train and train_exit sections
  threshold_grid(step)      a strictly decreasing calibration grid 1.0, 1 - step, ...
  calibration_section(...)  Learn-then-Test settings and the validity study
  mesh_section(...)         device mesh sizes and logical-axis sharding rules
  override(section, ...)    sets existing fields only
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import ml_collections

from calm_jax.decoding.exit_rule import ExitConfig

T5_VOCAB_SIZE = 32128  # rows of T5's SentencePiece embedding (32100 pieces + padding rows)


@dataclasses.dataclass(frozen=True)
class ModelPreset:
  """The T5Config sizes of one checkpoint family and where its public weights live."""

  d_model: int  # residual width
  d_kv: int  # width of one attention head
  d_ff: int  # feed-forward hidden width
  num_layers: int  # encoder layers
  num_decoder_layers: int  # decoder layers (L, the exit points)
  num_heads: int  # attention heads
  gated: bool  # True: T5 1.1 (gated-GELU, untied head); False: T5 1.0 (ReLU, tied, scaled)
  hub_name: str  # the public Hugging Face checkpoint with these sizes ("" = none)
  encoder_attention_type: str = "full"  # 'full' (T5) or LongT5's 'local' / 'transient-global'


MODEL_PRESETS = {
    # CALM's model (Schuster et al. 2022): T5 1.1 with 8 encoder and 8 decoder layers,
    # 6 heads of 64, d_ff 1024, fine-tuned with the anytime objective. No public weights:
    # train it (mode 'train') or import a fine-tuned google/t5-v1_1-small (same sizes).
    "calm_t5_8l": ModelPreset(512, 64, 1024, 8, 8, 6, True, ""),
    # T5 1.0 (Raffel et al. 2020): ReLU feed-forward, LM head tied to the embedding.
    "t5_small": ModelPreset(512, 64, 2048, 6, 6, 8, False, "t5-small"),
    "t5_base": ModelPreset(768, 64, 3072, 12, 12, 12, False, "t5-base"),
    "t5_large": ModelPreset(1024, 64, 4096, 24, 24, 16, False, "t5-large"),
    # Flan-T5 (Chung et al. 2022): T5 1.1 sizes, gated-GELU, untied LM head.
    "flan_t5_small": ModelPreset(512, 64, 1024, 8, 8, 6, True, "google/flan-t5-small"),
    "flan_t5_base": ModelPreset(768, 64, 2048, 12, 12, 12, True, "google/flan-t5-base"),
    "flan_t5_large": ModelPreset(1024, 64, 2816, 24, 24, 16, True, "google/flan-t5-large"),
    # LongT5 (Guo et al. 2022): T5 1.1 sizes whose encoder attends within 127 tokens on each
    # side ('local'), plus one global token per 16 inputs ('transient-global').
    "long_t5_local_base": ModelPreset(768, 64, 2048, 12, 12, 12, True,
                                      "google/long-t5-local-base", "local"),
    "long_t5_tglobal_base": ModelPreset(768, 64, 2048, 12, 12, 12, True,
                                        "google/long-t5-tglobal-base", "transient-global"),
    "long_t5_local_large": ModelPreset(1024, 64, 2816, 24, 24, 16, True,
                                       "google/long-t5-local-large", "local"),
    "long_t5_tglobal_large": ModelPreset(1024, 64, 2816, 24, 24, 16, True,
                                         "google/long-t5-tglobal-large", "transient-global"),
}


def get_preset(name: str) -> ModelPreset:
  """The preset called `name`; an unknown name lists the known ones."""
  if name not in MODEL_PRESETS:
    raise ValueError(f"model preset {name!r} is unknown; allowed: {', '.join(MODEL_PRESETS)}")
  return MODEL_PRESETS[name]


def model_section(preset: str, *, dtype: str = "float32",
                  dropout_rate: float = 0.1) -> ml_collections.ConfigDict:
  """The `model` section for `preset` (a name in MODEL_PRESETS), initialised fresh.

  Real weights come from a local Hugging Face directory (`--config.model.hf_path=DIR`,
  e.g. a copy of the preset's hub_name or a fine-tuned model) or from a calm_jax params
  export (`--config.model.checkpoint=<workdir>/model`); either one brings its own sizes,
  and the size fields below then only describe what a fresh initialisation would build.
  """
  sizes = get_preset(preset)
  model = ml_collections.ConfigDict()
  model.hf_path = ""  # local Hugging Face T5 directory or Hub name; "" = no import
  # A calm_jax params export (what `train` writes to <workdir>/model); "" = none. At most
  # one of checkpoint and hf_path; with either, the size fields below are ignored.
  model.checkpoint = ""
  model.vocab_size = T5_VOCAB_SIZE  # embedding and LM head rows (T5's SentencePiece)
  model.d_model = sizes.d_model  # residual width
  model.d_kv = sizes.d_kv  # width of one attention head
  model.d_ff = sizes.d_ff  # feed-forward hidden width
  model.num_layers = sizes.num_layers  # encoder layers
  model.num_decoder_layers = sizes.num_decoder_layers  # decoder layers (exit points)
  model.num_heads = sizes.num_heads  # attention heads
  # 'relu' (T5 v1.0) or 'gated-gelu' (T5 v1.1, Flan-T5, CALM)
  model.feed_forward_proj = "gated-gelu" if sizes.gated else "relu"
  model.tie_word_embeddings = not sizes.gated  # LM head = embedding (T5 v1.0 only)
  model.scale_decoder_outputs = not sizes.gated  # d_model**-0.5 before the head (v1.0 only)
  model.dropout_rate = dropout_rate  # dropout used only in training (T5 fine-tunes with 0.1)
  model.dtype = dtype  # activations: 'float32' or 'bfloat16' (TPU/GPU throughput)
  model.param_dtype = "float32"  # parameters: 'float32' or 'bfloat16'
  # Encoder self-attention: 'full' (T5), or LongT5's 'local' / 'transient-global'
  model.encoder_attention_type = sizes.encoder_attention_type
  model.local_radius = 127  # LongT5: tokens attended on each side of a token
  model.global_block_size = 16  # LongT5 transient-global: input tokens per global token
  return model


def exit_section(**values) -> ml_collections.ConfigDict:
  """The `exit` section: one field per ExitConfig field, at the dataclass's default, with
  `values` (existing fields only) swapped in. The fields and their one-line comments live
  in calm_jax/decoding/exit_rule.py, so a new ExitConfig field reaches every config."""
  section = ml_collections.ConfigDict()
  for field in dataclasses.fields(ExitConfig):
    if field.default is dataclasses.MISSING:
      raise ValueError(f"ExitConfig.{field.name} has no plain default for the exit section")
    # A float field with an integer default must still parse --config.exit.x=0.5.
    float_field = field.type in ("float", float)
    section[field.name] = float(field.default) if float_field else field.default
  override(section, **values)
  return section


def optimizer_section(*, steps: int, batch_size: int, optimizer: str, learning_rate: float,
                      schedule: str, warmup_steps: int, checkpoint_every: int,
                      weight_decay: float = 0.0, clip_norm: float = 1.0, log_every: int = 100,
                      keep_checkpoints: int = 2,
                      async_checkpoints: bool = True) -> ml_collections.ConfigDict:
  """The optimizer and loop fields that the `train` and `train_exit` sections share
  (calm_jax.training.optimizers.OptimizerConfig and the loop settings); each section adds
  its own fields to the returned ConfigDict."""
  section = ml_collections.ConfigDict()
  section.steps = steps  # optimizer steps
  section.batch_size = batch_size  # global batch of examples (divisible by mesh.data and hosts)
  section.optimizer = optimizer  # 'adafactor' (T5's default) or 'adamw'
  section.learning_rate = learning_rate  # peak learning rate
  section.schedule = schedule  # 'rsqrt' (T5), 'cosine' or 'constant', after warmup
  section.warmup_steps = warmup_steps  # linear warmup from 0
  section.weight_decay = weight_decay  # decoupled weight decay
  section.clip_norm = clip_norm  # global gradient-norm clipping; 0 = off
  section.log_every = log_every  # console line and TensorBoard every this many steps
  section.checkpoint_every = checkpoint_every  # Orbax save every this many steps (and at the end)
  section.keep_checkpoints = keep_checkpoints  # checkpoints kept in <workdir>/checkpoints/<run>
  section.async_checkpoints = async_checkpoints  # save in the background
  return section


def threshold_grid(step: float = 0.05) -> Tuple[float, ...]:
  """Strictly decreasing candidate thresholds 1.0, 1 - step, ... down to just above 0."""
  if not 0.0 < step < 1.0:
    raise ValueError(f"threshold grid step must lie strictly between 0 and 1, got {step!r}")
  count = int(round(1.0 / step))
  grid = tuple(round(1.0 - step * i, 6) for i in range(count))
  return tuple(value for value in grid if value > 0.0)


def calibration_section(*, num_examples: int, similarity: str, objective: str = "textual",
                        deltas: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
                        epsilon: float = 0.05, step: float = 0.05,
                        batch_size: int = 0) -> ml_collections.ConfigDict:
  """The `calibration` section (the calibrate mode checks it before any model work)."""
  section = ml_collections.ConfigDict()
  section.num_examples = num_examples  # examples of data.calibration_split decoded
  section.thresholds = threshold_grid(step)  # candidate thresholds, strictly decreasing
  section.deltas = tuple(deltas)  # tolerated expected losses, each in (0, 1)
  section.epsilon = epsilon  # allowed probability that the guarantee fails
  # Rules compared: 'naive' or 'ltt_<hoeffding|bentkus|hoeffding_bentkus|binomial>[_bonferroni]'
  section.rules = ("ltt_hoeffding_bentkus", "ltt_hoeffding", "ltt_bentkus", "naive")
  section.objective = objective  # 'textual' (vs the full model) or 'risk' (vs references)
  # Loss = 1 - similarity: rouge_l, token_f1, exact_match, bleu, chrf, ... (data.metrics),
  # or token_agreement (ids, textual only)
  section.similarity = similarity
  section.num_splits = 100  # random calibration/test splits of the validity study
  section.calibration_fraction = 0.8  # share of examples calibrating each split
  section.batch_size = batch_size  # rows per packed grid decode call; 0 = num_examples
  # Examples per saved part of the grid decode: a killed calibrate / evaluate restarted with
  # the same workdir and config continues after the last saved part; 0 = the whole split
  section.save_every = 64
  return section


def mesh_section(*, data: int = -1, model: int = 1) -> ml_collections.ConfigDict:
  """The `mesh` section: ('data', 'model') sizes and the logical-axis rules."""
  section = ml_collections.ConfigDict()
  section.data = data  # data-parallel size; -1 = every device left after `model`
  section.model = model  # model-parallel size (splits vocab, mlp and attention dims)
  # Logical parameter axis -> mesh axis (None = replicated); see calm_jax.training.sharding.
  section.rules = (("batch", "data"), ("vocab", "model"), ("mlp", "model"),
                   ("joined_kv", "model"), ("heads", "model"), ("embed", None),
                   ("layers", None), ("relpos_buckets", None))
  return section


def override(section: ml_collections.ConfigDict, **values) -> None:
  """Sets existing fields of `section`; a name the section lacks is a ValueError, so a
  config can never grow a key that default.py (and so the run modes) does not know."""
  unknown = sorted(set(values) - set(section.keys()))
  if unknown:
    raise ValueError(f"config section has no field(s) {unknown}; known: "
                     f"{', '.join(sorted(section.keys()))}")
  for name, value in values.items():
    section[name] = value
