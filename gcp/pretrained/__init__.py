"""The authors' published checkpoints by name: downloaded, checked, converted and cached.

  model, variables = gcp.pretrained.load("fast-mpn-cov/resnet50")
  logits = model.apply(variables, images, train=False)

  python -m gcp.pretrained list                 # the registry (gcp.pretrained.registry)
  python -m gcp.pretrained download NAME        # fetch and convert for offline use
  python -m gcp.pretrained import NAME FILE     # a file downloaded by hand (e.g. Baidu)
  python main.py ... --config.init_from=pretrained:NAME   # fine-tune, --mode=eval, video

Importing this package registers the `pretrained:` source with `gcp.checkpoint`, so
`pretrained:NAME` works wherever a checkpoint is read (`config.init_from` for fine-tuning,
`--mode=eval` and video inflation; `load_variables`, `load_model_spec`); main.py imports it.

Cache: `$GCP_CACHE/pretrained`, else `$XDG_CACHE_HOME/gcp/pretrained`, else
`~/.cache/gcp/pretrained`; one folder per name (`fast-mpn-cov/resnet50/`) holding
  <model>.pth / .ckpt   the release's file as published (downloaded or imported)
  record.json           its SHA-256, size, where it came from and when
  converted/            the gcp checkpoint `gcp.convert` made of it (a checkpoint directory),
                        with conversion.json: the fingerprint of the conversion code
A download is written next to its final name (`.partial`, which the next attempt resumes;
gdown's own `.part` files for Google Drive), checked, moved into place and converted; the
conversion is written to a temporary folder and renamed, so readers never see half of
either. A file that fails a check is deleted, and the message says what came back. A
cached model needs no network; `GCP_OFFLINE=1` forbids it, and a missing model then fails
with the command that fetches it and the links to download it by hand.

Checks before a file is kept: it starts as a file of its format does (not an HTML page: the
message gives the page's title and text), its size is the one its README gives (1%) and
at least 2 bytes per parameter, its SHA-256 is the registry's where known, and it converts
to exactly the registry's model. The first accepted file's SHA-256 is recorded; a later
download with another one is used with a warning. A converted checkpoint made by another
version of the conversion code (`conversion_fingerprint`) is converted again on use.
"""
import contextlib
import difflib
import fcntl
import functools
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import time

from gcp import checkpoint, reporting
from gcp import convert as convert_lib
from gcp.models import create_model
from gcp.pretrained import fetch
from gcp.pretrained.registry import ENTRIES, REGISTRY, RELEASES, Entry, expected_spec
from gcp.workdir import write_atomic

__all__ = ["ENTRIES", "REGISTRY", "RELEASES", "Entry", "PretrainedError", "cache_root",
           "checkpoint_dir", "import_file", "load"]

PREFIX = "pretrained"
CACHE_ENV, OFFLINE_ENV = "GCP_CACHE", "GCP_OFFLINE"
_RECORD, _CONVERTED, _STAMP = "record.json", "converted", "conversion.json"
_SIZE_TOLERANCE = 0.01  # of the README's size, which it rounds to 0.1 MiB
_MIN_BYTES_PER_PARAM = 2  # float16 weights at the least
# The code a converted checkpoint depends on (paths in the gcp package): the converter, and
# the models, heads and defaults that fix its variables and spec.
_CONVERSION_CODE = ("convert", "models", "heads.py", "layers.py", "config.py")


class PretrainedError(ValueError):
  """A pretrained model that cannot be provided; the message says why and what to do."""


class _NeedsTorch(PretrainedError):
  """A PyTorch file cannot be converted without torch (the file itself may be fine)."""


def cache_root() -> str:
  """Where downloaded and converted models are kept (see the module docstring)."""
  root = os.environ.get(CACHE_ENV) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "gcp")
  return os.path.join(os.path.abspath(root), "pretrained")


def offline() -> bool:
  return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def get(name: str) -> Entry:
  """The registry entry of `name`; an unknown name raises with the closest ones."""
  if name in REGISTRY:
    return REGISTRY[name]
  close = difflib.get_close_matches(name, REGISTRY, n=3, cutoff=0.6)
  raise PretrainedError(f"no pretrained model {name!r}"
                        f"{'; did you mean ' + ', '.join(close) + '?' if close else ''} "
                        "(`python -m gcp.pretrained list` lists them)")


def entry_dir(entry: Entry) -> str:
  return os.path.join(cache_root(), *entry.name.split("/"))


def cached_file(entry: Entry) -> str:
  return os.path.join(entry_dir(entry), entry.filename)


def converted_dir(entry: Entry) -> str:
  return os.path.join(entry_dir(entry), _CONVERTED)


@functools.cache
def conversion_fingerprint() -> str:
  """A hash of the conversion code's sources (`_CONVERSION_CODE`): a converted checkpoint
  stamped with another one is converted again."""
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  digest = hashlib.sha256()
  for part in _CONVERSION_CODE:
    path = os.path.join(package, part)
    files = (sorted(glob.glob(os.path.join(path, "**", "*.py"), recursive=True))
             if os.path.isdir(path) else [path])
    for file in files:
      digest.update(os.path.relpath(file, package).encode())
      with open(file, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- public API

def checkpoint_dir(name: str, *, force: bool = False) -> str:
  """The converted checkpoint directory of pretrained model `name`, downloaded (unless
  `GCP_OFFLINE` is set) and converted if the cache does not hold it yet, converted again
  if the conversion code changed. `force`: download the file again.

  Raises:
    PretrainedError: unknown name, the download failed or was rejected (the message says
      what came back, and how to fetch the file by hand), or the file does not convert to
      the registry's model.
  """
  entry = get(name)
  with _locked(entry):
    if force or not os.path.exists(cached_file(entry)):
      _download(entry)
    elif _stamp(entry) != conversion_fingerprint():
      why = ("the conversion code changed since it was converted" if _stamp(entry) else
             "not converted yet")
      reporting.info(f"converting {entry.name} ({why})")
      _convert(entry)
  return converted_dir(entry)


def import_file(name: str, path: str) -> str:
  """Registers a file the user downloaded (e.g. from the Baidu mirror) as pretrained model
  `name`, after the checks a download gets; the cache keeps a copy. Returns the converted
  checkpoint directory."""
  entry = get(name)
  if not os.path.isfile(path):
    raise PretrainedError(f"no file at {path!r}")
  problem, sha = _inspect(entry, path)
  if problem:
    raise PretrainedError(f"{path} is {problem}; it is not the file of {entry.name} "
                          f"({entry.description}, {_links(entry)[0]}). Nothing was cached.")
  with _locked(entry), _tidy(entry):
    staged = cached_file(entry) + ".import"
    os.makedirs(entry_dir(entry), exist_ok=True)
    try:
      shutil.copyfile(path, staged)
      _install(entry, staged, sha, os.path.abspath(path))
    finally:  # a copy cut short (a full disk)
      with contextlib.suppress(FileNotFoundError):
        os.remove(staged)
  return converted_dir(entry)


def load(name: str):
  """`(model, variables)` of pretrained model `name` (see `checkpoint_dir`):
  `model.apply(variables, images, train=False)` gives its logits."""
  directory = checkpoint_dir(name)
  return (create_model(**checkpoint.load_model_spec(directory)),
          checkpoint.load_variables(directory))


# ----------------------------------------------------------------------------- internals

@contextlib.contextmanager
def _locked(entry: Entry):
  """One process at a time downloads or converts an entry (a shared cache)."""
  locks = os.path.join(cache_root(), ".locks")
  os.makedirs(locks, exist_ok=True)
  with open(os.path.join(locks, entry.name.replace("/", "__") + ".lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _stamp(entry: Entry) -> str | None:
  return (_read_json(os.path.join(converted_dir(entry), _STAMP)) or {}).get("fingerprint")


def _links(entry: Entry) -> tuple[str, ...]:
  return entry.urls + entry.mirrors


def _unavailable(entry: Entry, reason: str) -> PretrainedError:
  links = "\n".join(f"  {url}" for url in _links(entry))
  return PretrainedError(
      f"cannot fetch pretrained model {entry.name} into the cache ({entry_dir(entry)}): "
      f"{reason}\n"
      f"Fetch it with:\n  python -m gcp.pretrained download {entry.name}\n"
      f"or download it by hand from\n{links}\n"
      f"and register the file with:\n  python -m gcp.pretrained import {entry.name} FILE")


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(fetch.CHUNK):
      digest.update(block)
  return digest.hexdigest()


def _inspect(entry: Entry, path: str) -> tuple[str, str]:
  """`(problem, sha256)` of a file offered as `entry`'s: problem "" if it passes the checks
  that need no conversion (format, size, SHA-256), else what the file is."""
  problem = fetch.content_problem(path, convert_lib.detect_format(entry.filename))
  size = os.path.getsize(path)
  mib = size / 2**20
  if not problem and entry.size_mib and abs(mib / entry.size_mib - 1) > _SIZE_TOLERANCE:
    problem = (f"{size:,} bytes ({mib:.1f} MiB), where {entry.release.repo} gives "
               f"{entry.size_mib} MiB")
  if not problem and size < _MIN_BYTES_PER_PARAM * entry.params:
    problem = (f"{size:,} bytes, too few for the {entry.params:,} parameters of "
               f"{entry.description}")
  sha = "" if problem else _sha256(path)
  if sha and entry.sha256 and sha != entry.sha256:
    problem, sha = f"a file with SHA-256 {sha}, where the registry has {entry.sha256}", ""
  return problem, sha


def _download(entry: Entry) -> None:
  """Fetches `entry`'s file from its first URL that serves it, checks it and installs it
  (`_install`); raises `_unavailable` with every URL's failure otherwise."""
  if offline():
    raise _unavailable(entry, f"{OFFLINE_ENV} forbids downloading.")
  staged = cached_file(entry) + ".download"
  os.makedirs(entry_dir(entry), exist_ok=True)
  failures = [] if any(map(fetch.is_automatic, entry.urls)) else [
      "none of its links can be downloaded by a program"]
  for url in filter(fetch.is_automatic, entry.urls):
    try:
      fetch.fetch(url, staged, desc=entry.name)
    except fetch.FetchError as e:
      failures.append(str(e))
      continue
    problem, sha = _inspect(entry, staged)
    if not problem:
      with _tidy(entry):
        _install(entry, staged, sha, url)
      return
    os.remove(staged)
    failures.append(f"{url} sent {problem}; it was not kept")
  with _tidy(entry):
    raise _unavailable(entry, "no download succeeded:\n" +
                       "\n".join(f"  {failure}" for failure in failures))


@contextlib.contextmanager
def _tidy(entry: Entry):
  """On an error, removes the entry's folder (and its release's) if nothing was kept."""
  try:
    yield
  except BaseException:
    with contextlib.suppress(OSError):
      os.removedirs(entry_dir(entry))
    raise


def _install(entry: Entry, staged: str, sha: str, origin: str) -> None:
  """Moves a checked file into the cache and converts it. If it does not convert to the
  registry's model it is deleted and the file it replaced (if any) restored; without torch
  (PyTorch files) it stays, unconverted until a later use converts it."""
  record_path = os.path.join(entry_dir(entry), _RECORD)
  record = _read_json(record_path)
  if record and record["sha256"] != sha:
    reporting.warn(f"the file of {entry.name} from {origin} has SHA-256 {sha}, but the one "
                   f"accepted on {record['time']} from {record['origin']} had "
                   f"{record['sha256']}: the release may have replaced it. It passed every "
                   "other check and is used.")
  original = cached_file(entry)
  previous = original + ".previous"
  if os.path.exists(original):
    os.replace(original, previous)
  os.replace(staged, original)

  def accept():
    write_atomic(record_path, json.dumps(
        {"sha256": sha, "size": os.path.getsize(original), "origin": origin,
         "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    with contextlib.suppress(FileNotFoundError):
      os.remove(previous)
  try:
    _convert(entry)
  except _NeedsTorch:
    accept()
    raise
  except PretrainedError as e:
    os.remove(original)
    if os.path.exists(previous):
      os.replace(previous, original)
    raise PretrainedError(f"{e}\nThe file was not kept.") from e
  accept()


def _spec_differences(entry: Entry, spec: dict) -> list[str]:
  want = expected_spec(entry)
  return [f"{key}: {want.get(key)!r} in the registry, {spec.get(key)!r} in the file"
          for key in sorted(set(spec) | set(entry.spec)) if want.get(key) != spec.get(key)]


def _convert(entry: Entry) -> None:
  """Converts the cached file into `converted_dir(entry)` (replacing an older conversion
  only once the new one is complete). Raises PretrainedError if the file does not convert
  to the registry's model; without torch for a PyTorch file, says how to install it."""
  original, out = cached_file(entry), converted_dir(entry)
  if (convert_lib.detect_format(original) == "pytorch"
      and importlib.util.find_spec("torch") is None):
    raise _NeedsTorch(f"converting {entry.name} ({original}, kept in the cache) needs torch: "
                      "pip install torch==2.13.0 (a CPU build is enough), then use it again")
  tmp = f"{out}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    try:
      converted = convert_lib.convert_to_checkpoint(original, tmp)
    except convert_lib.ConversionError as e:
      raise PretrainedError(f"the file of {entry.name} does not convert: {e}") from e
    differences = _spec_differences(entry, converted.spec)
    if differences:
      raise PretrainedError(
          f"the file of {entry.name} holds another model than the registry lists:\n  " +
          "\n  ".join(differences) + "\nTo use it anyway, convert it with `python -m "
          "gcp.convert FILE DIR` and give --config.init_from=DIR.")
    write_atomic(os.path.join(tmp, _STAMP), json.dumps(
        {"fingerprint": conversion_fingerprint(), "layout": converted.layout}, indent=2))
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)


checkpoint.register_source(PREFIX, checkpoint_dir)
