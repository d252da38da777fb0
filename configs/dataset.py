"""The dataset configs: CALM's 8+8-layer T5 on one of the studies' datasets, from one table.

  python -m calm_jax.main --config=configs/dataset.py:cnndm --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-cnndm --config.data.vocabulary=/models/t5-cnndm

It needs a checkpoint (model.hf_path: a local Hugging Face T5 directory; or model.checkpoint:
a calm_jax export) and its tokenizer (data.vocabulary, usually the same directory), and the
data (../shared/data or $CALM_JAX_DATA_DIR for the `*_local` tasks; seqio/TFDS for `calm_*`).
Run bare, it stops within seconds with one line naming the first of these it lacks. Modes
that read the train split (train, train_exit, all) need a task that has one (the local sets
have none: --config.data.task=calm_<dataset>, or --config.train.split=validation).

The name after ':' is a row of DATASETS; configs/<name>.py is the same config under its
own file name (each file's docstring says where its data comes from). Every dataset config
starts from configs/default.py, so it has the same keys, then takes the settings that all
accelerator-sized runs share (real_data_defaults) and its row's values.
"""

# No `from __future__ import annotations`: loaded from its path as a module sys.modules may
# not hold, this file must not need dataclasses to resolve string annotations.
import dataclasses

import ml_collections

from configs import base, default


@dataclasses.dataclass(frozen=True)
class Dataset:
  """The values one dataset config sets (the config field each one fills in brackets)."""

  task: str  # [data.task] a data/tasks.py task or a seqio calm_* task
  max_input_len: int  # [data.max_input_len] input ids (+EOS) of data.vocabulary; cut beyond
  max_decode_len: int  # [decode.max_decode_len] output positions generated per example
  tau: float  # [exit.tau] decay of the threshold over output positions; 0 = constant
  similarity: str  # [calibration.similarity, analysis.similarity] loss = 1 - similarity
  num_calibration_examples: int  # [calibration.num_examples] calibration examples decoded
  calibration_batch_size: int  # [calibration.batch_size] rows per packed grid decode call
  input_prefix: str  # [generate.input_prefix] T5's task prefix of the generate mode's inputs
  model: str = "calm_t5_8l"  # [model] a preset of configs/base.py (MODEL_PRESETS)
  calibration_split: str = "validation"  # [data.calibration_split] split calibrate decodes
  test_split: str = "test"  # [data.test_split] split decode, evaluate and analyze read


SUMMARIZE = "summarize: "  # T5's summarisation prefix

DATASETS = {
    # Summarisation: CALM's setting, softmax response with the decaying threshold (tau = 4)
    # and textual consistency by ROUGE-L. News articles; highlights are ~60 pieces.
    "cnndm": Dataset("cnn_dailymail_local", 1024, 128, 4.0, "rouge_l", 500, 64, SUMMARIZE),
    # One-sentence BBC summaries (~25 pieces); seqio over TFDS.
    "xsum": Dataset("calm_xsum", 1024, 64, 4.0, "rouge_l", 500, 64, SUMMARIZE),
    # Dialogues (summaries ~25 pieces).
    "samsum": Dataset("samsum_local", 512, 64, 4.0, "rouge_l", 500, 64, SUMMARIZE),
    # Long inputs on LongT5 (transient-global): 4096 input ids, the studies' default;
    # --config.data.max_input_len=16384 for the long setting (the encoder's cost grows
    # about linearly with it). Concatenated news sources (summaries ~260 words); seqio over TFDS.
    "multi_news": Dataset("calm_multi_news", 4096, 256, 4.0, "rouge_l", 500, 32, SUMMARIZE,
                          model="long_t5_tglobal_base"),
    # Patent description -> abstract (~120 words); seqio over TFDS.
    "big_patent": Dataset("calm_big_patent", 4096, 256, 4.0, "rouge_l", 500, 32, SUMMARIZE,
                          model="long_t5_tglobal_base"),
    # Question answering: answers are a few tokens, so the threshold stays constant; token
    # F1 (SQuAD's metric). Inputs already read "question: <q> context: <c>", so no prefix.
    # The validation set is the only local split: calibration and evaluation both read it.
    "squad": Dataset("squad_v1.1_local", 512, 32, 0.0, "token_f1", 1000, 64, "",
                     test_split="validation"),
    # Translation: CALM's setting, decaying threshold (tau = 4), sentence BLEU.
    # newsdiscusstest2015 is the only local split: calibration and evaluation both read it.
    "wmt15_enfr": Dataset("wmt15_en_fr_local", 256, 256, 4.0, "bleu", 1000, 64,
                          "translate English to French: ", calibration_split="test"),
    # newstest2013 (validation) and newstest2014 (test).
    "wmt14_ende": Dataset("wmt14_en_de_local", 256, 256, 4.0, "bleu", 1000, 64,
                          "translate English to German: "),
    # TED talks' sentences are short; seqio over JSON Lines you write (dev2010 / tst2017).
    "iwslt2017": Dataset("calm_iwslt2017_en_de", 128, 128, 4.0, "bleu", 1000, 64,
                         "translate English to German: "),
}


def get_dataset(name: str) -> Dataset:
  """The row called `name`; an unknown or missing name lists the allowed ones."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset config {name!r}; use --config=configs/dataset.py:<name> "
                     f"with <name> one of: {', '.join(DATASETS)}")
  return DATASETS[name]


def real_data_defaults(config: ml_collections.ConfigDict) -> None:
  """Settings every dataset config shares: T5's fine-tuning recipe, the mesh, and batch
  and sample sizes of the other modes."""
  config.mesh = base.mesh_section(data=-1, model=1)  # all devices data-parallel
  base.override(config.data,
                num_examples=16)  # test examples the decode mode decodes
  base.override(config.train,
                num_examples=100_000,  # examples read from data.task's 'train' split
                steps=50_000,  # optimizer steps
                batch_size=64,  # global batch (divisible by mesh.data and the hosts)
                optimizer="adafactor",  # T5's fine-tuning optimizer
                learning_rate=1e-3,  # T5's constant fine-tuning rate
                schedule="constant",  # no decay after warmup
                warmup_steps=1000,  # linear warmup from 0
                z_loss=1e-4,  # weight of log(Z)^2, as in T5X
                log_every=100,  # console line and TensorBoard every this many steps
                checkpoint_every=2000)  # Orbax save every this many steps (and at the end)
  base.override(config.train_exit,
                steps=5000,  # optimizer steps of the exit classifier (the backbone is frozen)
                batch_size=64,  # global batch of examples (all their tokens)
                checkpoint_every=1000)  # Orbax save every this many steps (and at the end)
  base.override(config.generate,
                batch_size=16)  # inputs per decode call
  base.override(config.analysis,
                num_examples=64,  # test examples analysed
                batch_size=16,  # examples per forward/decode call
                after_layers=(0, 2, 4))  # monotonicity after these layers (each <= L - 2)


def get_config(name: str = "") -> ml_collections.ConfigDict:
  """The config of dataset `name` (a key of DATASETS; config_flags passes the text after
  ':' in --config=configs/dataset.py:<name>)."""
  dataset = get_dataset(name)
  config = default.get_config()
  real_data_defaults(config)
  # The row's preset (CALM's T5 1.1 with 8+8 layers unless named); real weights:
  # --config.model.hf_path (a local HF directory) or --config.model.checkpoint (a calm_jax
  # export), with --config.data.vocabulary=DIR.
  config.model = base.model_section(dataset.model)
  base.override(config.data,
                task=dataset.task,
                # 'byte', or the checkpoint's tokenizer directory (usually model.hf_path)
                vocabulary="byte",
                calibration_split=dataset.calibration_split,
                test_split=dataset.test_split,
                max_input_len=dataset.max_input_len)
  config.decode.max_decode_len = dataset.max_decode_len  # output positions per example
  # CALM's measure: softmax response (top-1 minus top-2) at lambda = 0.9 before calibration.
  config.exit = base.exit_section(measure="softmax_diff", threshold=0.9, tau=dataset.tau)
  # Textual consistency with the full model, epsilon 0.05 (CALM's setting).
  config.calibration = base.calibration_section(
      num_examples=dataset.num_calibration_examples, similarity=dataset.similarity,
      batch_size=dataset.calibration_batch_size)
  config.generate.input_prefix = dataset.input_prefix  # T5's task prefix, if any
  config.analysis.similarity = dataset.similarity  # oracle quality against the references
  return config
