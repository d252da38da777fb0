"""Tiny random transformers T5 models saved with `save_pretrained`, for parity tests.

Weights are redrawn at larger scales than transformers' initialisation (std
scale / sqrt(fan_in)) so that outputs depend on the input; generation tests use scale 1.5 so
that greedy outputs also vary from token to token.
"""

from __future__ import annotations

import torch
import transformers

# T5 v1.0 style: ReLU FFN, tied and scaled head. Unequal depth, num_heads * d_kv != d_model.
V10 = dict(vocab_size=61, d_model=16, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=3,
           num_heads=3, feed_forward_proj="relu", relative_attention_num_buckets=8,
           relative_attention_max_distance=20)
# T5 v1.1 / Flan-T5 style: gated-GELU FFN, no output scaling.
V11 = dict(vocab_size=67, d_model=20, d_kv=4, d_ff=24, num_layers=3, num_decoder_layers=4,
           num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
           relative_attention_num_buckets=10, relative_attention_max_distance=16)


def random_hf_t5(seed: int = 0, scale: float = 1.0, **overrides) -> transformers.T5ForConditionalGeneration:
  """A random T5ForConditionalGeneration in eval mode (dropout off)."""
  torch.manual_seed(seed)
  values = dict(decoder_start_token_id=0, dropout_rate=0.0)
  values.update(overrides)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**values)).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if param.ndim == 1:
        param.copy_(1.0 + 0.2 * torch.randn_like(param))
      elif name.startswith("shared") or name.startswith("lm_head"):
        param.normal_(0.0, 1.0)
      else:
        param.normal_(0.0, scale / param.shape[-1] ** 0.5)
  return model


def save_random_hf_t5(directory, seed: int = 0, scale: float = 1.0,
                      **overrides) -> transformers.T5ForConditionalGeneration:
  model = random_hf_t5(seed, scale, **overrides)
  model.save_pretrained(str(directory))
  return model
