"""The calibration side of the project (the calibration package: LTT, consistency losses,
the validity study; and the metrics) and the analysis studies load without JAX, so they can
be used and tested on their own."""

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", ["calm_jax.calibration", "calm_jax.calibration.ltt",
                                    "calm_jax.calibration.consistency",
                                    "calm_jax.calibration.validity", "calm_jax.data.metrics",
                                    "calm_jax.utils.files"])
def test_import_does_not_load_jax(module):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
  code = f"import sys, {module}; assert 'jax' not in sys.modules, 'jax loaded'"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr


def test_study_modules_import_no_jax():
  modules = ", ".join(f"calm_jax.analysis.{m}" for m in (
      "layerwise", "stability", "confidence", "rank", "accuracy", "saturation", "oracle",
      "plots"))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
  code = f"import sys, {modules}; assert 'jax' not in sys.modules, 'jax was imported'"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
