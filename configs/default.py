"""The embedded offline default: a small T5 built here, decoding generated examples on CPU.

Every other config starts from this one (configs/demo.py is it under the README's name;
configs/dataset.py swaps in each dataset's sections), so it holds every field there is.

Run: ./launch/local.sh --config=configs/default.py --workdir=workdir/demo
Override any field: --config.decode.max_decode_len=32 --config.model.d_model=128
"""

import ml_collections

from calm_jax.data import byte_vocab
from configs import base


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # What to run (one of the run modes): 'all', 'decode', 'train', 'train_exit', 'calibrate',
  # 'evaluate', 'analyze' or 'generate'.
  config.mode = "all"  # the README's first command: train, train_exit, calibrate, evaluate
  config.seed = 0  # seeds parameter initialisation and the generated examples
  # Refuse a run whose memory estimate (calm_jax/modes/memory.py) exceeds the devices'.
  config.memory_check = True

  config.model = ml_collections.ConfigDict()
  config.model.hf_path = ""  # local Hugging Face T5 directory or Hub name; "" = fresh init
  # A calm_jax params export (what `train` writes to <workdir>/model); "" = none. At most
  # one of checkpoint and hf_path; with either, the size fields below are ignored.
  config.model.checkpoint = ""
  config.model.vocab_size = byte_vocab.VOCAB_SIZE  # byte vocabulary rows
  config.model.d_model = 64  # residual width
  config.model.d_kv = 16  # width of one attention head
  config.model.d_ff = 128  # feed-forward hidden width
  config.model.num_layers = 2  # encoder layers
  # Decoder layers (exit points). Six, not four: at this width a decoder layer costs little
  # next to the encoder, the head and each position's fixed work, so with four layers even
  # exiting every token at layer 1 bought only about 2x (ideal 2.3x); six leave early exit
  # room to show (static exit at layer 1: 2.8x on the CPU clock, ideal 3.0x, batch 200).
  config.model.num_decoder_layers = 6
  config.model.num_heads = 4  # attention heads
  config.model.feed_forward_proj = "gated-gelu"  # 'relu' (T5 v1.0) or 'gated-gelu' (v1.1)
  config.model.tie_word_embeddings = False  # untied LM head, as in T5 v1.1
  config.model.scale_decoder_outputs = False  # d_model**-0.5 before the head (T5 v1.0 only)
  config.model.dropout_rate = 0.0  # dropout used only in training
  config.model.dtype = "float32"  # activations: 'float32' or 'bfloat16'
  config.model.param_dtype = "float32"  # parameters: 'float32' or 'bfloat16'
  # Encoder self-attention: 'full' (T5), or LongT5's 'local' / 'transient-global'
  config.model.encoder_attention_type = "full"
  config.model.local_radius = 127  # LongT5: tokens attended on each side of a token
  config.model.global_block_size = 16  # LongT5 transient-global: input tokens per global token

  config.data = ml_collections.ConfigDict()
  config.data.task = "generated"  # data/tasks.py task, or seqio calm_* (every mode reads it)
  config.data.vocabulary = "byte"  # 'byte' or a local Hugging Face tokenizer directory
  config.data.calibration_split = "validation"  # split the calibrate mode decodes
  config.data.test_split = "test"  # split decode, evaluate and analyze read
  config.data.num_examples = 4  # examples the decode mode decodes
  config.data.max_input_len = 49  # input ids (+EOS), padded; longer inputs are cut
  # JSON Lines tasks: skip (and count) malformed lines instead of stopping at the first one.
  config.data.skip_malformed = False

  config.decode = ml_collections.ConfigDict()
  config.decode.max_decode_len = 25  # output positions generated (and trained) per example

  # Every ExitConfig field at its default (calm_jax/decoding/exit_rule.py comments each one),
  # except these:
  config.exit = base.exit_section(
      measure="softmax_diff",  # CALM's softmax response: top-1 minus top-2 probability
      threshold=0.9,  # lambda before calibration (calibrate chooses one per delta)
      tau=0.0,  # constant threshold: outputs are at most 24 bytes
      top_k=64)  # softmax_topk / softmax_pruned: K within the byte vocabulary's 259 ids

  # 200 calibration examples, deltas 0.05 to 0.3, epsilon 0.1 (configs/base.py documents each
  # field). Loss = 1 when the early-exit output differs at all from the full model's
  # (string_match: sequence-level textual consistency, the task's accuracy). Token agreement
  # averages over bytes, 80% of which layer 1 already gets right: its loss stayed below 0.05
  # at every threshold, so deltas 0.1, 0.2 and 0.3 all chose the lowest threshold.
  config.calibration = base.calibration_section(num_examples=200, similarity="string_match",
                                                epsilon=0.1)
  # 1.0, 0.999, 0.995, 0.99, 0.98, 0.97, 0.96, then 0.95, 0.9, ..., 0.05: the trained model's
  # softmax_diff and meta_mlp confidences crowd near 1 (at 0.95 most tokens already leave at
  # layer 1), so the top of the grid is finer.
  config.calibration.thresholds = ((1.0, 0.999, 0.995, 0.99, 0.98, 0.97, 0.96)
                                   + base.threshold_grid(0.05)[1:])

  # Optimizer and loop fields (configs/base.py comments each one), then the objective.
  config.train = base.optimizer_section(steps=1500, batch_size=64, optimizer="adamw",
                                        learning_rate=3e-3, schedule="cosine",
                                        warmup_steps=100, checkpoint_every=500)
  config.train.split = "train"  # split of data.task trained on (e.g. 'validation' for a
  # ../shared/data set, which has no train split)
  config.train.num_examples = 20000  # examples drawn from that split (files: the first N)
  # Per-layer weights of the anytime loss: 'calm' (w_i = i / sum j), 'uniform', 'geometric'
  # (2^i) or 'last' (ordinary last-layer training).
  config.train.layer_weighting = "calm"
  config.train.label_smoothing = 0.0  # in [0, 1)
  config.train.z_loss = 0.0  # weight of log(Z)^2 (T5X uses 1e-4)
  # 'anytime' (CALM: every layer, weighted by layer_weighting) or 'shallow_deep' (FREE: exits
  # at exit.shallow_exit_layer and at L, plus layer-wise distillation).
  config.train.objective = "anytime"
  config.train.kd_weight = 1.0  # shallow_deep: weight of the distillation term (>= 0)
  # shallow_deep: 'last', 'uniform' (the formula), 'uniform_published' (FREE's fixed lists,
  # for (L, s) = (24, 4/6/8/10/12) and (12, 3)) or 'dynamic' layer pairs
  config.train.kd_mapping = "last"
  # shallow_deep: a learned [d, d] map on the shallow states (saved as <export>/kd_map.npy)
  config.train.kd_linear_map = False

  # The exit classifier's optimizer and loop (batch_size counts examples, all their tokens;
  # checkpoints in <workdir>/checkpoints/exit_<classifier>), then the classifier.
  config.train_exit = base.optimizer_section(steps=300, batch_size=64, optimizer="adamw",
                                             learning_rate=3e-3, schedule="cosine",
                                             warmup_steps=50, checkpoint_every=300)
  # Learned exit classifier trained on the frozen model: meta_linear, meta_mlp,
  # three_state_mlp, lstm or attention (calm_jax.decoding.classifiers).
  config.train_exit.classifier = "meta_mlp"
  config.train_exit.hidden_width = 0  # meta_mlp / three_state_mlp hidden width; 0 = d_model
  config.train_exit.lstm_layers = 2  # lstm: stacked LSTM layers
  config.train_exit.width = 64  # lstm hidden width / attention model width
  config.train_exit.num_heads = 4  # attention heads
  # 'consistent' (layer top-1 == final top-1, CALM) or 'gold' (== the reference token)
  config.train_exit.labels = "consistent"
  # 'class_weights' (CALM's per-layer balancing), 'logit_adjustment' or 'none'
  config.train_exit.balancing = "class_weights"
  config.train_exit.loss = "cross_entropy"  # or 'geometric' (fit the oracle exit layer)

  config.mesh = base.mesh_section(data=-1, model=1)  # all devices data-parallel

  config.generate = ml_collections.ConfigDict()
  # UTF-8 text file with one input a line (blank lines skipped), or '-' for standard input;
  # the generate mode writes <workdir>/generate.jsonl. "" = not set (the mode refuses to run).
  config.generate.input_file = ""
  config.generate.batch_size = 8  # inputs per decode call; 0 = all at once
  config.generate.input_prefix = ""  # prepended to every input (T5's task prefix, if any)

  config.evaluate = ml_collections.ConfigDict()
  # Measures calibrated and evaluated; learned ones (meta_mlp, ...) need a classifier in
  # evaluate.classifier_dir/<name> (the `all` mode trains each one first).
  config.evaluate.measures = ("softmax_diff", "state_saturation", "meta_mlp")
  config.evaluate.rule = "ltt_hoeffding_bentkus"  # calibration rule choosing each threshold
  config.evaluate.num_examples = 200  # test examples decoded per configuration
  config.evaluate.static_layers = (1, 2)  # static exits measured beside the measures
  config.evaluate.oracle = True  # also measure the local oracle (an upper bound)
  # Every configuration is timed in this many interleaved rounds (medians; at least 5).
  config.evaluate.timing_rounds = 7
  # Test examples also timed one at a time (batch 1): 32 calls of about 2 ms each per round
  # keep one slow call from moving the round (8 gave rounds from 0.8x to 2.2x).
  config.evaluate.latency_examples = 32
  # FREE rows (modes/evaluate_free.py): synchronized decoding calibrated like the measures,
  # and the verified (lossless) mode; off by default, ~3 more minutes on the demo CPU.
  config.evaluate.free = False
  config.evaluate.classifier_dir = ""  # "" = <workdir>/exit_classifiers

  config.analysis = ml_collections.ConfigDict()
  # Studies run (calm_jax.analysis.STUDIES): stability, confidence, rank, accuracy,
  # saturation, oracle.
  config.analysis.studies = ("stability", "confidence", "rank", "accuracy", "saturation",
                             "oracle")
  # Decoder inputs of the layer-wise studies: the references ('teacher_forced') and/or the
  # full model's own greedy outputs ('free_running'). The oracle always decodes free-running.
  config.analysis.inputs = ("teacher_forced", "free_running")
  config.analysis.num_examples = 32  # generated examples analysed
  config.analysis.batch_size = 0  # examples per forward/decode call; 0 = all at once
  # Local Hugging Face T5 directories compared side by side with the model above (e.g. a
  # plainly trained and a CALM-trained model); their vocabulary must hold the byte ids.
  config.analysis.compare_hf_paths = ()
  # calm_jax params exports (what `train` writes to <workdir>/model) compared likewise.
  config.analysis.compare_checkpoints = ()
  # Layers k after which confidence must never fall / similarity must rise strictly (over
  # layers k+1..L; 0 = all layers); each k <= L - 2. The paper's 0, 4, 8 suit deeper models.
  config.analysis.after_layers = (0, 1, 2)
  config.analysis.rank_cutoffs = (1, 5, 10, 50)  # k of "final top-1 ranks within the top k"
  config.analysis.saturation_threshold = 0.9  # cosine with the final state that saturates
  config.analysis.num_easy = 4  # most saturated sequences shown as "easy"
  config.analysis.num_difficult = 4  # least saturated sequences shown as "difficult"
  config.analysis.calibration_bins = 10  # confidence bins of the expected calibration error
  config.analysis.similarity = "exact_match"  # oracle quality vs references (data.metrics)
  return config
