"""How gcp sets JAX up: XLA's CPU compiler options and the persistent compilation cache.

- CPU compiler options (`CPU_COMPILER_OPTIONS`): XLA's YNNPACK fusions for matmuls,
  convolutions and reductions, and the compile-time-oriented pass preset, for the
  training, evaluation and initialisation programs of `gcp.train` (`compiler_options()`).
  On the 2-core CPU this was developed on they make a ResNet-50 training step 2.3-4.1x
  faster than XLA's defaults and its compile shorter (benchmarks/train_step.py). They are
  compile options of those programs, not `XLA_FLAGS`, so they reach neither other JAX
  programs nor TensorFlow's own XLA (which rejects flags it does not know). They are used
  for the jaxlib minor version they were measured with, on CPU backends only. A flag the
  user names in `XLA_FLAGS` wins over ours; `GCP_XLA_DEFAULTS=0` turns them all off.
  (XLA's `eltwise` YNN fusion is left out: in jaxlib 0.10.2 it fails to compile some
  evaluation programs, "unsupported layout in YNN fusion".)
- Compilation cache (`configure()`, run on `import gcp`): compiled programs persist in
  `default_cache_dir()` (`$XDG_CACHE_HOME/gcp/jax`, else `~/.cache/gcp/jax`), so a
  resumed run, an evaluation or an analysis of a model compiled before loads its programs
  instead of compiling them again. JAX's own settings win: `JAX_COMPILATION_CACHE_DIR`
  moves it, `JAX_ENABLE_COMPILATION_CACHE=false` turns it off. The cache is bounded
  (`CACHE_MAX_BYTES`, least recently used entries go first), which also makes JAX lock
  it, so concurrent runs share it safely.
- A quick exit (`spare_exit_collection()`, called by main.py once its work is written; the
  other commands end with `exit_quickly(code)`): the interpreter's exit skips the garbage
  collector's passes over what TensorFlow and JAX made, about 1 s of every launch.
"""
import gc
import importlib.metadata
import os
import pathlib
import sys
from typing import NoReturn

# As XLA_FLAGS spells them: --xla_cpu_experimental_ynn_fusion_type=dot,reduce
# --xla_cpu_opt_preset=FAST_COMPILE.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE",
    "xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_COMPILE"}
OPTIONS_JAXLIB = "0.10."   # the jaxlib releases CPU_COMPILER_OPTIONS were measured with
CACHE_MAX_BYTES = 4 << 30
CACHE_EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": "requests",
                "/jax/compilation_cache/cache_hits": "loaded",
                "/jax/compilation_cache/cache_misses": "written"}

_counts = dict.fromkeys(CACHE_EVENTS.values(), 0)
_listening = False


def xla_flag_names(xla_flags: str) -> set[str]:
  """The flags an `XLA_FLAGS` value sets, by name (`--xla_foo=1` -> `xla_foo`)."""
  return {flag.split("=")[0].lstrip("-") for flag in xla_flags.split()}


def add_xla_flags(*flags: str) -> None:
  """Appends `flags` (`--name=value`) to the process's `XLA_FLAGS`, each unless the variable
  names it already (the user's setting wins). XLA reads it when its backend starts."""
  current = os.environ.get("XLA_FLAGS", "")
  named = xla_flag_names(current)
  os.environ["XLA_FLAGS"] = " ".join(
      [current, *(f for f in flags if f.split("=")[0].lstrip("-") not in named)]).strip()


def measured_jaxlib(jaxlib_version: str | None = None) -> bool:
  """Whether `CPU_COMPILER_OPTIONS` were measured with this jaxlib (default: installed)."""
  version = jaxlib_version or importlib.metadata.version("jaxlib")
  return version.startswith(OPTIONS_JAXLIB)


def default_compiler_options(backend: str, jaxlib_version: str, xla_flags: str) -> dict:
  """The `CPU_COMPILER_OPTIONS` that apply to `backend` under that jaxlib, less those the
  user's `xla_flags` (an `XLA_FLAGS` value) name."""
  if backend != "cpu" or not measured_jaxlib(jaxlib_version):
    return {}
  named = xla_flag_names(xla_flags)
  return {k: v for k, v in CPU_COMPILER_OPTIONS.items() if k not in named}


def compiler_options() -> dict:
  """`jax.jit(..., compiler_options=)` for gcp's training and evaluation programs on this
  process's default backend."""
  if os.environ.get("GCP_XLA_DEFAULTS", "1") == "0":
    return {}
  import jax
  return default_compiler_options(jax.default_backend(), importlib.metadata.version("jaxlib"),
                                  os.environ.get("XLA_FLAGS", ""))


def failure_hint(error: Exception) -> str | None:
  """What to do when XLA fails inside a fusion that `CPU_COMPILER_OPTIONS` turned on (they
  are experimental in XLA), or None for other errors."""
  if "YNN" in str(error) and compiler_options():
    return ("XLA's experimental YNNPACK fusions, which gcp turns on for CPUs, failed on this "
            "program. Run again with GCP_XLA_DEFAULTS=0 (XLA's own CPU settings).")
  return None


def default_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "gcp", "jax")


def _count(event: str, **_):
  if event in CACHE_EVENTS:
    _counts[CACHE_EVENTS[event]] += 1


def cache_counts() -> dict:
  """Persistent-cache activity of this process so far: `requests` (compilations that could
  use the cache), `loaded` (served from it) and `written` (compiled and stored)."""
  return dict(_counts)


def cache_summary() -> str:
  """One line for the console, e.g. `compilation cache (DIR): 14 programs loaded, 2 compiled
  (2 stored)`, or `compilation cache: off`."""
  import jax
  if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
    return "compilation cache: off"
  counts = cache_counts()
  return (f"compilation cache ({jax.config.jax_compilation_cache_dir}): {counts['loaded']} "
          f"programs loaded, {counts['requests'] - counts['loaded']} compiled "
          f"({counts['written']} stored)")


def configure() -> None:
  """Set the compilation cache up where the user has not (idempotent)."""
  global _listening
  import jax
  if not jax.config.jax_compilation_cache_dir and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    path = pathlib.Path(default_cache_dir())
    try:
      path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache
      return
    jax.config.update("jax_compilation_cache_dir", str(path))
  if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    # Every program, not only those over JAX's 1 s default: a second launch compiles nothing.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  if not _listening:
    jax.monitoring.register_event_listener(_count)
    _listening = True


def spare_exit_collection() -> None:
  """For a command whose work is written and closed: the interpreter's exit then skips the
  garbage collector's passes over every object TensorFlow and JAX made (~1 s of a launch).
  (`gc.freeze()`: the collector ignores the objects that exist now; exit handlers still
  run.)"""
  gc.freeze()


def exit_quickly(code: int) -> NoReturn:
  """`sys.exit(code)` for a command whose work is written (`python -m gcp.export`, ...),
  sparing the exit's garbage collection (`spare_exit_collection`)."""
  spare_exit_collection()
  sys.exit(code)
