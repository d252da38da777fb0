"""The installable distribution: a wheel built from the source holds every calm_jax package
(and nothing else), installs into a fresh venv without its dependencies, imports from
there, and its `calm-jax` console script is `python -m calm_jax.main`.

Offline and cheap (well under a minute): the wheel is built without build isolation, and
the fresh venv sees the test venv's installed dependencies through a .pth file, never the
repository itself (no PYTHONPATH, a temporary working directory).
"""

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 60  # seconds per step


def source_files(package_dir):
  """Paths (relative to the repository) of the package's .py files."""
  found = set()
  for directory, subdirs, files in os.walk(package_dir):
    subdirs[:] = [name for name in subdirs if name != "__pycache__"]
    rel = os.path.relpath(directory, ROOT)
    found.update(f"{rel}/{name}".replace(os.sep, "/") for name in files if name.endswith(".py"))
  return found


def packages(paths):
  """Dotted names of the packages among `paths` (directories holding an __init__.py)."""
  return {path[:-len("/__init__.py")].replace("/", ".")
          for path in paths if path.endswith("/__init__.py")}


def run(command, cwd, env=None):
  return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT, check=False)


def clean_env():
  """The environment without anything that would put the repository on sys.path."""
  env = {key: value for key, value in os.environ.items()
         if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
  return dict(env, JAX_PLATFORMS="cpu", PYTHONNOUSERSITE="1")


@pytest.fixture(name="wheel", scope="module")
def fixture_wheel(tmp_path_factory):
  """The wheel built from a copy of the source (so no build output lands in the repo)."""
  source = tmp_path_factory.mktemp("source")
  shutil.copy(os.path.join(ROOT, "pyproject.toml"), source)
  shutil.copy(os.path.join(ROOT, "README.md"), source)
  shutil.copytree(os.path.join(ROOT, "calm_jax"), source / "calm_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  dist = tmp_path_factory.mktemp("dist")
  done = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "--no-index", "--wheel-dir", str(dist), str(source)], cwd=str(source))
  assert done.returncode == 0, done.stdout + done.stderr
  (wheel,) = dist.glob("calm_jax-*.whl")
  return wheel


@pytest.fixture(name="venv", scope="module")
def fixture_venv(wheel, tmp_path_factory):
  """A fresh venv with the wheel installed (--no-deps); the test venv's site-packages are
  on its path after its own."""
  venv = tmp_path_factory.mktemp("venv")
  done = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=str(venv))
  assert done.returncode == 0, done.stderr
  python = venv / "bin" / "python"
  done = run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
              "--no-index", str(wheel)], cwd=str(venv))
  assert done.returncode == 0, done.stdout + done.stderr
  site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
             cwd=str(venv), env=clean_env()).stdout.strip()
  ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  with open(os.path.join(site, "test_venv_dependencies.pth"), "w", encoding="utf-8") as pth:
    pth.write("".join(f"{path}\n" for path in sorted(ours)))
  return venv


def test_wheel_holds_every_calm_jax_package_and_nothing_else(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  code = {name for name in names if not name.startswith("calm_jax-")}
  assert all(name.startswith("calm_jax/") for name in code), sorted(code)
  expected = source_files(os.path.join(ROOT, "calm_jax"))
  assert packages(code) == packages(expected)
  assert {name for name in code if name.endswith(".py")} == expected
  (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
  scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
  assert "calm-jax = calm_jax.main:cli" in scripts


def test_calm_jax_imports_from_the_fresh_venv(venv, tmp_path):
  done = run([str(venv / "bin" / "python"), "-c",
              "import calm_jax, sys; print(calm_jax.__file__); print(sys.path)"],
             cwd=str(tmp_path), env=clean_env())
  assert done.returncode == 0, done.stderr
  location = done.stdout.splitlines()[0]
  assert os.path.realpath(location).startswith(os.path.realpath(str(venv)) + os.sep), location
  # The checkout is not on the path (a path inside it, like its .venv's site-packages that
  # the fresh venv sees, is fine: it holds no calm_jax).
  entries = [os.path.realpath(entry or str(tmp_path))
             for entry in ast.literal_eval(done.stdout.splitlines()[1])]
  assert os.path.realpath(ROOT) not in entries, entries


def help_of(command, cwd):
  done = run(command, cwd=str(cwd), env=clean_env())
  assert "Traceback" not in done.stderr and "FATAL" not in done.stderr, done.stderr
  return done


def test_console_script_is_python_m_calm_jax_main(venv, tmp_path):
  script = help_of([str(venv / "bin" / "calm-jax"), "--helpfull"], tmp_path)
  module = help_of([str(venv / "bin" / "python"), "-m", "calm_jax.main", "--helpfull"],
                   tmp_path)
  # absl exits with status 1 after printing --help / --helpfull, before main runs.
  assert script.returncode == module.returncode == 1
  for flag in ("--config:", "--workdir:", "--[no]distributed:", "--coordinator_address:"):
    assert flag in script.stdout and flag in module.stdout, flag


def test_console_script_loads_a_config_from_the_working_directory(venv, tmp_path):
  """As with `python -m`, --config=configs/... resolves in the working directory, and the
  config files' own `from configs import ...` works there (here: a copy of configs/)."""
  shutil.copytree(os.path.join(ROOT, "configs"), tmp_path / "configs",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  done = help_of([str(venv / "bin" / "calm-jax"), "--config=configs/dataset.py:cnndm",
                  "--helpfull"], tmp_path)
  assert done.returncode == 1 and "--workdir:" in done.stdout
