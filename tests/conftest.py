import os
import sys

import pytest

# Tests never reach the network: Hub lookups fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs_after_each_module():
  """Frees JAX's compiled programs after every test module: the suite compiles thousands of
  programs, and a single long process that keeps them all once crashed inside XLA's
  compiler late in the run."""
  yield
  jax = sys.modules.get("jax")  # only if a test imported it (some must run without JAX)
  if jax is not None:
    jax.clear_caches()
