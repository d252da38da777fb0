"""Learning-rate schedules and the optimizer settings checks
(calm_jax.training.optimizers)."""

import numpy as np
import pytest

from calm_jax.training.optimizers import OptimizerConfig, make_optimizer, make_schedule


def test_schedules_with_warmup():
  rsqrt = make_schedule(OptimizerConfig(learning_rate=1.0, schedule="rsqrt", warmup_steps=4))
  np.testing.assert_allclose([float(rsqrt(s)) for s in (0, 2, 4, 16)],
                             [0.0, 0.5, 1.0, 0.5], rtol=1e-6)
  cosine = make_schedule(OptimizerConfig(learning_rate=2.0, schedule="cosine", warmup_steps=2,
                                         total_steps=12))
  np.testing.assert_allclose([float(cosine(s)) for s in (1, 2, 7, 12)], [1.0, 2.0, 1.0, 0.0],
                             atol=1e-6)
  constant = make_schedule(OptimizerConfig(learning_rate=0.3, schedule="constant"))
  assert float(constant(0)) == pytest.approx(0.3) and float(constant(1000)) == pytest.approx(0.3)


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "sgd", "optimizer='sgd' is not known; allowed: adafactor, adamw"),
    ("schedule", "linear", "schedule='linear' is not known; allowed: rsqrt, cosine, constant"),
    ("learning_rate", 0.0, "learning_rate must be > 0"),
    ("clip_norm", -1.0, "clip_norm must be >= 0"),
])
def test_optimizer_settings_are_checked(field, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    make_optimizer(OptimizerConfig(**{field: value}))
