"""The run record: what a workdir's outputs are, so that a set left mixed or partial by an
interrupted run is found.

Every mode run ends by writing `<workdir>/run_record.json` (last, atomically, process 0):
for every file the run wrote (modified since it started; `checkpoints/`, `tensorboard/` and
the resume store `resume/` are left out, they manage themselves) its mode, the digest of the config
that wrote it, its size and SHA-256. Entries of earlier runs in the workdir stay. A run
that is killed writes no record, so before a mode starts, `inconsistencies` compares the
workdir with the record: a recorded file whose contents changed since (a later run stopped
between its writes: the set mixes two configs), a recorded file gone, or an output that no
finished run recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Dict, Iterator, List

import ml_collections

from calm_jax.utils.files import write_json_atomically

RECORD_FILE = "run_record.json"
# Orbax, TensorBoard and the resume store (modes/resume.py) manage these themselves
SELF_MANAGED_DIRS = ("checkpoints", "tensorboard", "resume")
OUTPUT_SUFFIXES = (".json", ".jsonl", ".md", ".png", ".msgpack")  # what the modes write
CLOCK_PROBE = ".calm_jax_clock"
TEMPORARY_PREFIX = ".tmp-"  # utils/files.py's temporary files


@dataclasses.dataclass(frozen=True)
class FileEntry:
  """One recorded output file."""

  mode: str  # the mode that wrote it
  config_digest: str  # config_digest of that run's config
  size: int  # bytes
  sha256: str  # of its contents


def config_digest(config: ml_collections.ConfigDict) -> str:
  """The first 16 hex digits of the SHA-256 of the config's sorted JSON."""
  text = json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def workdir_clock(workdir: str) -> int:
  """The workdir's file system time now (ns), read off a probe file: files modified at or
  after it were written by the run that follows."""
  probe = os.path.join(workdir, CLOCK_PROBE)
  with open(probe, "w", encoding="utf-8"):
    pass
  try:
    return os.stat(probe).st_mtime_ns
  finally:
    os.unlink(probe)


def _files(workdir: str) -> Iterator[str]:
  """Every regular file under workdir (relative paths), outside the self-managed folders,
  without the record, probes and temporary files."""
  for root, dirs, names in os.walk(workdir):
    if root == workdir:
      dirs[:] = [d for d in dirs if d not in SELF_MANAGED_DIRS]
    for name in names:
      relative = os.path.relpath(os.path.join(root, name), workdir)
      if relative not in (RECORD_FILE, CLOCK_PROBE) and not name.startswith(TEMPORARY_PREFIX):
        yield relative


def read_record(workdir: str) -> Dict[str, FileEntry]:
  """{relative path: entry} of the workdir's record; {} when there is none. A record that
  is not valid JSON names its file."""
  path = os.path.join(workdir, RECORD_FILE)
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as handle:
      files = json.load(handle)["files"]
    return {name: FileEntry(**entry) for name, entry in files.items()}
  except (ValueError, KeyError, TypeError) as error:
    raise ValueError(f"{path} is not a valid run record ({error}); delete it to start a "
                     "new record") from None


def write_record(workdir: str, mode: str, config: ml_collections.ConfigDict,
                 started_ns: int) -> str:
  """Adds every file modified since `started_ns` to the record (written last); returns its
  path."""
  files = read_record(workdir)
  digest = config_digest(config)
  for name in _files(workdir):
    path = os.path.join(workdir, name)
    if os.stat(path).st_mtime_ns >= started_ns:
      files[name] = FileEntry(mode, digest, os.path.getsize(path), file_sha256(path))
  files = {name: files[name] for name in sorted(files)}
  path = os.path.join(workdir, RECORD_FILE)
  write_json_atomically(path, {"files": {n: dataclasses.asdict(e) for n, e in files.items()}})
  return path


def _is_output(name: str) -> bool:
  return name.endswith(OUTPUT_SUFFIXES)


def inconsistencies(workdir: str) -> List[str]:
  """What in the workdir disagrees with its record, one sentence each ([] when coherent
  or when the workdir holds no outputs)."""
  if not os.path.isdir(workdir):
    return []
  record, problems = read_record(workdir), []
  for name, entry in record.items():
    path = os.path.join(workdir, name)
    if not os.path.isfile(path):
      problems.append(f"{name} (written by {entry.mode}) is missing")
    elif (os.path.getsize(path) != entry.size or file_sha256(path) != entry.sha256):
      problems.append(f"{name} changed after the {entry.mode} run that recorded it: a later "
                      "run stopped before finishing, so outputs may mix two configs")
  unrecorded = [n for n in _files(workdir) if n not in record and _is_output(n)]
  if unrecorded:
    problems.append(f"{', '.join(sorted(unrecorded)[:5])}"
                    f"{' ...' if len(unrecorded) > 5 else ''} not in {RECORD_FILE}: "
                    "written by a run that did not finish")
  return problems
