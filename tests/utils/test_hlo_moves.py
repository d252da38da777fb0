"""utils/hlo_moves.py: data moves found in hand-written HLO, and in the compiled decoders.

The compiled checks are the regression guard for per-token work that grows with a cache or
the parameters: with per-layer weights (the CPU default) neither greedy decoding nor the
early-exit decoder may move a buffer as large as one layer's self- or cross-attention K/V
(or one weight matrix) inside the token loop; with stacked weights greedy decoding does (layer i's
weights sliced out of the stack), which shows the scan can find them.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from calm_jax.decoding import generate as generate_module
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.greedy import GreedyPlan, _greedy_jit
from calm_jax.decoding.measures import MeasureContext
from calm_jax.decoding.plan import DecodeConstants, DecodePlan
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.exit_classifiers.registry import init_classifier, is_learned
from calm_jax.model.config import T5Config
from calm_jax.model.layer_layout import in_layout
from calm_jax.model.layers import Projection
from calm_jax.model.t5 import init_params
from calm_jax.utils.hlo_moves import computations, loop_copies, token_loop_computations

HLO = """HloModule m

%fused_slice (p0: f32[4,8]) -> f32[2,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  ROOT %s = f32[2,8]{1,0} slice(%p0), slice={[0:2], [0:8]}
}

%fused_add (p0: f32[4,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  ROOT %a = f32[4,8]{1,0} add(%p0, %p0)
}

%inner_body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %c = f32[4,8]{1,0} copy(%x)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%i, %c)
}

%inner_cond (p: (s32[], f32[4,8])) -> pred[] {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  ROOT %k = pred[] constant(true)
}

%outer_body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %moved = f32[2,8]{1,0} fusion(%x), kind=kLoop, calls=%fused_slice
  %added = f32[4,8]{1,0} fusion(%x), kind=kLoop, calls=%fused_add
  ROOT %w = (s32[], f32[4,8]{1,0}) while(%p), condition=%inner_cond, body=%inner_body
}

%small_body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%p)
}

ENTRY %main (a: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %a = (s32[], f32[4,8]{1,0}) parameter(0)
  %e = (s32[], f32[4,8]{1,0}) while(%a), condition=%inner_cond, body=%small_body
  ROOT %o = (s32[], f32[4,8]{1,0}) while(%e), condition=%inner_cond, body=%outer_body
}
"""


def test_hand_written_module():
  comps = computations(HLO)
  # The loop reaching the most computations is the outer one (and what it calls).
  assert token_loop_computations(comps) == {"outer_body", "inner_body", "inner_cond"}
  assert loop_copies(HLO, 0) == [(128, "copy", "f32[4,8]", "inner_body"),
                                 (64, "fusion(slice)", "f32[2,8]", "outer_body")]
  assert loop_copies(HLO, 100) == [(128, "copy", "f32[4,8]", "inner_body")]


def _loop_of_products(module, params_of):
  """HLO of a jitted loop of three products of h [1, 256] by `module` (512 outputs), whose
  parameters `params_of` builds from a kernel stored [out, in] ([512, 256])."""
  def run(stored, x):
    body = lambda i, h: module.apply({"params": params_of(stored)}, h)[:, :256]
    return jax.lax.fori_loop(0, 3, body, x)
  args = (jax.ShapeDtypeStruct((512, 256), jnp.float32),
          jax.ShapeDtypeStruct((1, 256), jnp.float32))
  return jax.jit(run).lower(*args).compile().as_text()


def test_a_kernel_relaid_inside_its_products_fusion_is_listed():
  # Flax's Dense multiplies [in, out]: a kernel stored [out, in] and transposed for it is
  # re-laid inside the product's fusion at every step (the move-only scan alone misses it);
  # the Projection that reads 'kernel_t' [out, in] as it lies moves nothing.
  relaid = loop_copies(_loop_of_products(nn.Dense(512, use_bias=False),
                                         lambda stored: {"kernel": stored.T}), 100_000)
  assert [(size, kind, shape) for size, kind, shape, _ in relaid] == [
      (512 * 256 * 4, "fusion(transpose+dot)", "f32[256,512]")]
  in_place = _loop_of_products(Projection(512, 1.0, out_in=True),
                               lambda stored: {"kernel_t": stored})
  assert loop_copies(in_place, 100_000) == []


CONFIG = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                  num_decoder_layers=3, num_heads=4, feed_forward_proj="gated-gelu")
BATCH, INPUT_LEN, DECODE_LEN = 2, 96, 64


def _abstract_params(layout: str):
  return jax.eval_shape(lambda: in_layout(init_params(CONFIG, jax.random.PRNGKey(0)), layout))


def _ids():
  return jax.ShapeDtypeStruct((BATCH, INPUT_LEN), jnp.int32)


def _greedy_hlo(layout: str) -> str:
  return _greedy_jit.lower(GreedyPlan(CONFIG, DECODE_LEN), _abstract_params(layout), _ids(),
                           _ids()).compile().as_text()


def _decoder_hlo(measure: str) -> str:
  plan = DecodePlan.checked(CONFIG, ExitConfig(measure=measure, threshold=0.5),
                            SamplingConfig(), DECODE_LEN, False)
  classifier = None
  if is_learned(measure):
    classifier = jax.eval_shape(lambda: init_classifier(measure, CONFIG,
                                                        jax.random.PRNGKey(1)))
  context = MeasureContext(params=_abstract_params("per_layer"), classifier_params=classifier,
                           model_config=CONFIG)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  constants = DecodeConstants(context=context, threshold=scalar, tau=scalar)
  return generate_module._generate_jit.lower(  # pylint: disable=protected-access
      plan, constants, _ids(), _ids(), jax.ShapeDtypeStruct((2,), jnp.uint32)
  ).compile().as_text()


# One layer's cross-attention keys for the whole batch: [B, H, S, dh] float32 (24 KiB), its
# self-attention keys [B, H, T, dh] (16 KiB); a weight matrix d x d_ff is 8 KiB.
ONE_LAYER_CROSS_KEYS = BATCH * CONFIG.num_heads * INPUT_LEN * CONFIG.d_kv * 4
ONE_LAYER_SELF_KEYS = BATCH * CONFIG.num_heads * DECODE_LEN * CONFIG.d_kv * 4
MIN_BYTES = CONFIG.d_model * CONFIG.d_ff * 4


def test_stacked_greedy_copies_layer_weights():
  assert loop_copies(_greedy_hlo("stacked"), MIN_BYTES)


def test_per_layer_greedy_moves_nothing_of_cache_or_weight_size():
  assert min(ONE_LAYER_CROSS_KEYS, ONE_LAYER_SELF_KEYS) > MIN_BYTES
  assert loop_copies(_greedy_hlo("per_layer"), MIN_BYTES) == []


# attention: its store of earlier positions, one layer [B, H', T, dh'], is as large as a
# layer's self-attention keys here; a layer sliced out of a stacked store was copied.
@pytest.mark.parametrize("measure", ["softmax_diff", "state_saturation", "attention"])
def test_early_exit_decoder_moves_nothing_of_cache_or_weight_size(measure):
  assert min(ONE_LAYER_CROSS_KEYS, ONE_LAYER_SELF_KEYS) > MIN_BYTES
  assert loop_copies(_decoder_hlo(measure), MIN_BYTES) == []
