"""The embedded offline default: a small T5 built here, decoding generated examples on CPU.

Run: ./launch/local.sh --config=configs/demo.py --workdir=workdir/demo
Override any field: --config.decode.max_decode_len=32 --config.model.d_model=128
"""

import ml_collections

from calm_jax.data import byte_vocab


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = "decode"  # what to run: 'decode' or 'calibrate' (calm_jax.run.MODES)
  config.seed = 0  # seeds parameter initialisation and the generated examples

  config.model = ml_collections.ConfigDict()
  config.model.hf_path = ""  # local Hugging Face T5 directory or Hub name; "" = fresh init
  config.model.vocab_size = byte_vocab.VOCAB_SIZE  # byte vocabulary rows
  config.model.d_model = 64  # residual width
  config.model.d_kv = 16  # width of one attention head
  config.model.d_ff = 128  # feed-forward hidden width
  config.model.num_layers = 2  # encoder layers
  config.model.num_decoder_layers = 4  # decoder layers (exit points)
  config.model.num_heads = 4  # attention heads
  config.model.feed_forward_proj = "gated-gelu"  # 'relu' (T5 v1.0) or 'gated-gelu' (v1.1)
  config.model.tie_word_embeddings = False  # untied LM head, as in T5 v1.1
  config.model.scale_decoder_outputs = False  # d_model**-0.5 before the head (T5 v1.0 only)
  config.model.dropout_rate = 0.0  # dropout used only in training
  config.model.dtype = "float32"  # activations: 'float32' or 'bfloat16'
  config.model.param_dtype = "float32"  # parameters: 'float32' or 'bfloat16'

  config.data = ml_collections.ConfigDict()
  config.data.num_examples = 4  # generated examples to decode
  config.data.max_input_len = 32  # input length in bytes (+EOS), padded/truncated

  config.decode = ml_collections.ConfigDict()
  config.decode.max_decode_len = 16  # output positions generated per example

  config.exit = ml_collections.ConfigDict()
  config.exit.measure = "softmax_diff"  # confidence measure (calm_jax.decoding.measures)
  config.exit.threshold = 0.9  # lambda; >= 1 never exits early
  config.exit.tau = 0.0  # threshold decay over positions; 0 = constant
  config.exit.decay = "paper"  # 'paper' or 'code' form of the decaying threshold
  config.exit.min_exit_layer = 1  # first layer a token may leave after
  config.exit.exit_interval = 1  # exit points every this many layers
  config.exit.static_exit_layer = 0  # layer of the 'static' measure
  config.exit.propagation = "copy_state"  # 'copy_state' or 'full_compute'

  config.calibration = ml_collections.ConfigDict()
  config.calibration.num_examples = 200  # generated examples decoded for calibration
  # Candidate thresholds, strictly decreasing: 1.0, 0.95, ..., 0.05.
  config.calibration.thresholds = tuple(round(1.0 - 0.05 * i, 2) for i in range(20))
  config.calibration.deltas = (0.05, 0.1, 0.2, 0.3)  # tolerated expected losses
  config.calibration.epsilon = 0.1  # allowed probability that the guarantee fails
  # Rules compared: 'naive' or 'ltt_<hoeffding|bentkus|hoeffding_bentkus|binomial>[_bonferroni]'
  config.calibration.rules = ("ltt_hoeffding_bentkus", "ltt_hoeffding", "ltt_bentkus", "naive")
  config.calibration.objective = "textual"  # 'textual' (vs the full model) or 'risk' (vs targets)
  # Loss = 1 - similarity: rouge_l, token_f1, exact_match, bleu, chrf, or token_agreement (ids)
  config.calibration.similarity = "token_agreement"
  config.calibration.num_splits = 100  # random calibration/test splits of the validity study
  config.calibration.calibration_fraction = 0.8  # share of examples calibrating each split
  config.calibration.batch_size = 0  # rows per packed grid decode call; 0 = num_examples
  return config
