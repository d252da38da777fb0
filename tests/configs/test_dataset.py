"""configs/dataset.py and the per-dataset files: one table row per dataset, the same config
under `dataset.py:<name>` and `<name>.py`, the default's structure, and today's values."""

import ast
import glob
import json
import os

import pytest

from calm_jax.data import tasks
from calm_jax.model.source import t5_config_from
from configs import base, dataset

DATASETS = ("cnndm", "xsum", "samsum", "squad", "wmt15_enfr", "wmt14_ende", "iwslt2017",
            "multi_news", "big_patent")
# The calibration / oracle similarity each dataset is scored by (CALM's choices).
SIMILARITY = {"cnndm": "rouge_l", "xsum": "rouge_l", "samsum": "rouge_l",
              "multi_news": "rouge_l", "big_patent": "rouge_l", "squad": "token_f1",
              "wmt15_enfr": "bleu", "wmt14_ende": "bleu", "iwslt2017": "bleu"}
SUMMARIZE = "summarize: "
TO_GERMAN = "translate English to German: "
# What each dataset config held before the table (data.task, data.max_input_len,
# decode.max_decode_len, exit.tau, calibration.num_examples, calibration.batch_size,
# generate.input_prefix, data.calibration_split, data.test_split), written out.
VALUES = {
    "cnndm": ("cnn_dailymail_local", 1024, 128, 4.0, 500, 64, SUMMARIZE, "validation", "test"),
    "xsum": ("calm_xsum", 1024, 64, 4.0, 500, 64, SUMMARIZE, "validation", "test"),
    "samsum": ("samsum_local", 512, 64, 4.0, 500, 64, SUMMARIZE, "validation", "test"),
    "squad": ("squad_v1.1_local", 512, 32, 0.0, 1000, 64, "", "validation", "validation"),
    "wmt15_enfr": ("wmt15_en_fr_local", 256, 256, 4.0, 1000, 64,
                   "translate English to French: ", "test", "test"),
    "wmt14_ende": ("wmt14_en_de_local", 256, 256, 4.0, 1000, 64, TO_GERMAN, "validation",
                   "test"),
    "iwslt2017": ("calm_iwslt2017_en_de", 128, 128, 4.0, 1000, 64, TO_GERMAN, "validation",
                  "test"),
    # 2048 before LongT5 (issue 19): 4096 on long_t5_tglobal_base now.
    "multi_news": ("calm_multi_news", 4096, 256, 4.0, 500, 32, SUMMARIZE, "validation", "test"),
    "big_patent": ("calm_big_patent", 4096, 256, 4.0, 500, 32, SUMMARIZE, "validation", "test"),
}
# The model preset of each row: CALM's 8+8-layer T5, or LongT5 for the long-input datasets.
PRESET = {name: "calm_t5_8l" for name in DATASETS}
PRESET.update(multi_news="long_t5_tglobal_base", big_patent="long_t5_tglobal_base")
# The model fields of each preset, written out (every row used CALM's before LongT5).
MODEL = {
    "calm_t5_8l": {
        "model.d_model": 512, "model.d_kv": 64, "model.d_ff": 1024, "model.num_layers": 8,
        "model.num_decoder_layers": 8, "model.num_heads": 6,
        "model.encoder_attention_type": "full"},
    "long_t5_tglobal_base": {
        "model.d_model": 768, "model.d_kv": 64, "model.d_ff": 2048, "model.num_layers": 12,
        "model.num_decoder_layers": 12, "model.num_heads": 12,
        "model.encoder_attention_type": "transient-global"},
}
# What every dataset config held before the table, beside its row.
SHARED = {
    "mode": "all", "seed": 0, "model.vocab_size": 32128,
    "model.feed_forward_proj": "gated-gelu", "model.tie_word_embeddings": False,
    "model.dropout_rate": 0.1, "model.hf_path": "", "model.checkpoint": "",
    "model.local_radius": 127, "model.global_block_size": 16,
    "data.vocabulary": "byte", "data.num_examples": 16,
    "exit.measure": "softmax_diff", "exit.threshold": 0.9, "exit.decay": "paper",
    "exit.min_exit_layer": 1, "exit.top_k": 2000, "exit.min_top_k": 10,
    "calibration.objective": "textual", "calibration.epsilon": 0.05,
    "calibration.deltas": (0.05, 0.1, 0.2, 0.3), "calibration.num_splits": 100,
    "train.num_examples": 100_000, "train.steps": 50_000, "train.batch_size": 64,
    "train.optimizer": "adafactor", "train.learning_rate": 1e-3, "train.schedule": "constant",
    "train.warmup_steps": 1000, "train.z_loss": 1e-4, "train.checkpoint_every": 2000,
    "train.layer_weighting": "calm", "train.clip_norm": 1.0,
    "train_exit.steps": 5000, "train_exit.batch_size": 64, "train_exit.checkpoint_every": 1000,
    "train_exit.optimizer": "adamw", "train_exit.learning_rate": 3e-3,
    "train_exit.warmup_steps": 50, "train_exit.classifier": "meta_mlp",
    "mesh.data": -1, "mesh.model": 1, "generate.batch_size": 16,
    "analysis.num_examples": 64, "analysis.batch_size": 16, "analysis.after_layers": (0, 2, 4),
    "evaluate.num_examples": 200,
}


def seqio_task_names(repo_root):
  """The seqio task names (from the module when seqio is installed, else from the table
  in its docstring, which names every registration)."""
  try:
    from calm_jax.data import seqio_tasks  # pylint: disable=import-outside-toplevel
    return set(seqio_tasks.TASK_NAMES)
  except ImportError:
    source = open(os.path.join(repo_root, "calm_jax", "data", "seqio_tasks.py"),
                  encoding="utf-8").read()
    table = ast.get_docstring(ast.parse(source))
    return {line.split()[0] for line in table.splitlines() if line.startswith("  calm_")}


def field(config, path):
  for key in path.split("."):
    config = config[key]
  return config


# ----------------------------------------------------------------------------- files

def test_every_dataset_has_a_config_file(repo_root):
  names = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(repo_root, "configs", "*.py"))}
  assert names == set(DATASETS) | {"demo", "default", "dataset", "base", "__init__"}


def test_the_table_has_every_dataset():
  assert set(dataset.DATASETS) == set(DATASETS)


@pytest.mark.parametrize("name", DATASETS)
def test_table_row_file_and_flag_give_one_config(name, load_config, parse_config):
  from_row = load_config(f"dataset:{name}")
  assert from_row.to_dict() == load_config(name).to_dict()
  parsed = parse_config(f"dataset:{name}")
  assert parsed.is_locked and parsed.to_dict() == from_row.to_dict()


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_config_has_the_default_structure(name, load_config, config_field_types):
  assert config_field_types(load_config(name)) == config_field_types(load_config("default"))


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_values_are_the_ones_before_the_table(name, load_config):
  config = load_config(f"dataset:{name}")
  task, input_len, decode_len, tau, calibration_examples, calibration_batch, prefix, \
      calibration_split, test_split = VALUES[name]
  assert (config.data.task, config.data.max_input_len, config.decode.max_decode_len) == (
      task, input_len, decode_len)
  assert config.exit.tau == tau and isinstance(config.exit.tau, float)
  assert config.calibration.similarity == config.analysis.similarity == SIMILARITY[name]
  assert (config.calibration.num_examples, config.calibration.batch_size) == (
      calibration_examples, calibration_batch)
  assert config.generate.input_prefix == prefix
  assert (config.data.calibration_split, config.data.test_split) == (
      calibration_split, test_split)
  assert config.calibration.thresholds == tuple(round(1.0 - 0.05 * i, 2) for i in range(20))
  for path, value in {**SHARED, **MODEL[PRESET[name]]}.items():
    assert field(config, path) == value, path
    assert type(field(config, path)) is type(value), path


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_task_and_studies_defaults(name, load_config, repo_root):
  config = load_config(name)
  task = config.data.task
  if task in tasks.task_names():
    registered = tasks.get_task(task)
    assert config.generate.input_prefix == registered.input_prefix
  else:
    assert task in seqio_task_names(repo_root), f"{name}: task {task!r} is registered nowhere"
  assert config.calibration.objective == "textual"
  assert config.calibration.similarity == config.analysis.similarity == SIMILARITY[name]
  assert config.exit.measure == "softmax_diff"
  if name in ("cnndm", "wmt15_enfr", "wmt14_ende"):
    assert config.exit.tau == 4.0  # CALM's decaying threshold on CNN/DM and WMT
  assert t5_config_from(config.model) == t5_config_from(base.model_section(PRESET[name]))


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_config_passes_the_setting_checks(name, load_config, check_settings):
  check_settings(load_config(name))


# ----------------------------------------------------------------------------- names

ALLOWED = ("use --config=configs/dataset.py:<name> with <name> one of: cnndm, xsum, samsum, "
           "multi_news, big_patent, squad, wmt15_enfr, wmt14_ende, iwslt2017")


@pytest.mark.parametrize("spec,shown", [("dataset:cnnd", "'cnnd'"), ("dataset", "''")])
def test_an_unknown_or_missing_name_lists_the_allowed_ones(spec, shown, load_config,
                                                           parse_config):
  message = f"unknown dataset config {shown}; {ALLOWED}"
  with pytest.raises(ValueError) as caught:
    load_config(spec)
  assert str(caught.value) == message
  with pytest.raises(Exception) as caught:
    parse_config(spec)
  assert message in str(caught.value)


# ----------------------------------------------------------------------------- overrides

@pytest.mark.filterwarnings(r"ignore:the load_module\(\) method is deprecated")
def test_overrides_are_typed_and_the_config_is_locked(parse_config):
  config = parse_config("cnndm", "--config.exit.tau=2", "--config.data.max_input_len=64",
                        "--config.calibration.deltas=(0.1,)")
  assert config.is_locked and config.exit.tau == 2.0 and config.data.max_input_len == 64
  assert config.calibration.deltas == (0.1,)
  with pytest.raises(AttributeError, match="tua"):
    config.exit.tua = 1.0
  with pytest.raises(TypeError, match="Could not override field 'tau'"):
    config.exit.tau = "four"


def _documented_overrides(repo_root, name):
  """The --config.* flags of the command in configs/<name>.py's docstring."""
  source = open(os.path.join(repo_root, "configs", f"{name}.py"), encoding="utf-8").read()
  paragraphs = ast.get_docstring(ast.parse(source)).split("\n\n")
  command = " ".join(next(p for p in paragraphs if "python -m calm_jax.main" in p)
                     .replace("\\\n", " ").split())
  assert command.startswith(f"python -m calm_jax.main --config=configs/{name}.py --workdir=DIR")
  return [arg for arg in command.split() if arg.startswith("--config.")]


def _checkpoint_with_tokenizer(directory, save_random_hf_t5):
  """A tiny random HF T5 and a word-level tokenizer in one directory (as a fine-tuned
  checkpoint comes), the model's vocabulary the tokenizer's size."""
  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  words = ["<pad>", "</s>", "<unk>", "summarize", ":", "the", "a", "to", "and", "is", "I",
           "you", "it", "?", ".", ",", "!"]
  tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  save_random_hf_t5(directory, vocab_size=len(words), d_model=16, d_kv=4, d_ff=16, num_layers=1,
                    num_decoder_layers=2, num_heads=2, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False)
  PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                          unk_token="<unk>").save_pretrained(str(directory))


def test_the_documented_command_runs_on_a_checkpoint_and_its_tokenizer(
    tmp_path, repo_root, parse_config, save_random_hf_t5):
  """configs/samsum.py's docstring command, its checkpoint a tiny random T5 with its
  tokenizer, sizes cut so that it runs in seconds."""
  if not os.path.isdir(os.path.join(tasks.default_data_dir(), "samsum")):
    pytest.skip("../shared/data/samsum is absent")
  from calm_jax import modes  # pylint: disable=import-outside-toplevel
  checkpoint = tmp_path / "t5-samsum"
  _checkpoint_with_tokenizer(checkpoint, save_random_hf_t5)
  documented = [arg.replace("/models/t5-samsum", str(checkpoint))
                for arg in _documented_overrides(repo_root, "samsum")]
  config = parse_config("samsum", *documented, "--config.calibration.num_examples=4",
                        "--config.calibration.batch_size=4", "--config.calibration.num_splits=2",
                        "--config.calibration.thresholds=(1.0, 0.5)",
                        "--config.calibration.calibration_fraction=0.5",
                        "--config.decode.max_decode_len=4", "--config.data.max_input_len=24")
  path = modes.run(config, str(tmp_path / "run"))
  assert json.load(open(path, encoding="utf-8"))["num_examples"] == 4
  assert sorted(os.listdir(tmp_path / "run")) == ["calibration.json", "run_record.json",
                                                  "validity.json", "validity.md", "validity.png"]
