"""Export a trained or converted model for serving: `python -m gcp.export SRC OUT --format F`.

Formats (`FORMATS`):
- `stablehlo`: `jax.export`, serialized (`jax.export.deserialize(open(OUT, 'rb').read())`),
  with a symbolic batch dimension.
- `savedmodel`: a TensorFlow SavedModel directory whose `serving_default` signature maps
  `images` to `logits` (the network by `jax.experimental.jax2tf`), for
  `tf.saved_model.load` and TF Serving.
- `onnx`: by jax2onnx (`ONNX_OPSET`), with a symbolic batch dimension, for onnxruntime.

The exported function is the model's evaluation (`gcp.train.eval_logits`, mirrors averaged
if the run evaluated with `eval_flip`) with iSQRT by Newton-Schulz iterations (matmuls only:
the same function as the default method to float32 rounding, on any runtime). By default it
includes the evaluation preprocessing that follows decoding (the checkpoint's `eval_pp`), so
that a served model takes raw RGB `uint8` images `[B, H, W, 3]`:
- the SavedModel runs the very TensorFlow ops of `gcp.data.preprocess` on each image, for
  images of any size (one size per batch);
- StableHLO and ONNX take images of one size fixed at export (`image_size`; default: the
  square the first resize produces, e.g. 256 x 256 for `resize_shorter(256)`, or the
  network's input size), preprocessed by the same ops written in jax.numpy
  (`JAX_OPS`: rgb, resize, resize_shorter, center_crop, normalize).
`preprocess=False` (`--no-preprocess`) exports the bare network on float32 images
`[B, S, S, C]` preprocessed by the caller.

Next to the artifact, `OUT.json` (`metadata_path`) records the architecture, head, input,
normalisation, class names, source checkpoint and gcp version.
"""
import sys

if __name__ == "__main__":  # before TensorFlow loads: a console without its log lines
  from gcp import reporting
  reporting.quiet_console(sys.argv)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
from importlib import metadata  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gcp import data, inference, runtime  # noqa: E402
from gcp import workdir as workdir_lib  # noqa: E402
from gcp.data import preprocess  # noqa: E402

FORMATS = ("stablehlo", "savedmodel", "onnx")
ONNX_OPSET = 21
# Heads jax2onnx 0.17.1 cannot convert, and why.
_NOT_ONNX = {"eig": "MPN-COV's eigendecomposition (jax2onnx converts unbatched eigh only)",
             "cbp": "CBP's Tensor Sketch (its FFT with a symbolic batch)"}
# Ops whose output size is fixed by their argument (the crops' per view).
_SIZE_OPS = ("center_crop", "resize", "ten_crop", "three_crop")


def metadata_path(out: str) -> str:
  """The metadata JSON written next to the artifact `out`."""
  return os.path.normpath(out) + ".json"


# ------------------------------------------------------------------- preprocessing in jnp

def _ops(eval_pp: str) -> list[tuple[str, list, dict]]:
  return [preprocess.parse_op(op) for op in eval_pp.split("|") if op.strip()]


def _resize_shorter_hw(h: int, w: int, size: int) -> tuple[int, int]:
  # As the TF op computes it: float32 scale, round half to even.
  scale = np.float32(size) / np.float32(min(h, w))
  return int(np.round(np.float32(h) * scale)), int(np.round(np.float32(w) * scale))


def _size_arg(args: list, kwargs: dict):
  """The `size` argument of a resize or crop op (every one takes it first)."""
  return args[0] if args else kwargs["size"]


def _size_hw(size) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else tuple(size)


def _resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """`[size_out, size_in]` weights of an antialiased bilinear resize along one axis (that of
  `jax.image.resize`, which is TensorFlow's `tf.image.resize(antialias=True)`), so that the
  artifact resizes by two matmuls: portable, and exact for any batch size."""
  return np.asarray(jax.image.resize(jnp.eye(size_in), (size_out, size_in), "linear",
                                     antialias=True))


def _jnp_op(name: str, args: list, kwargs: dict, shape: tuple[int, int, int]):
  """`(fn, out_shape)`: op `name` of `gcp.data.preprocess` in jax.numpy as
  `fn(x [B, H, W, C] float32) -> [B, H', W', C']`, for inputs of `shape` (H, W, C)."""
  h, w, c = shape
  if name == "rgb":
    return (lambda x: jnp.repeat(x, 3, axis=-1)) if c == 1 else (lambda x: x), (h, w, 3)
  if name in ("resize", "resize_shorter"):
    size = _size_arg(args, kwargs)
    out = _size_hw(size) if name == "resize" else _resize_shorter_hw(h, w, size)
    rows, cols = _resize_matrix(h, out[0]), _resize_matrix(w, out[1])
    return (lambda x: jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols,
                                 precision=jax.lax.Precision.HIGHEST)), (*out, c)
  if name == "center_crop":
    size = _size_arg(args, kwargs)
    top, left = (h - size) // 2, (w - size) // 2
    return (lambda x: x[:, top:top + size, left:left + size]), (size, size, c)
  if name == "normalize":
    mean, std = (jnp.asarray(v, jnp.float32) for v in preprocess.mean_std(*args, **kwargs))
    return (lambda x: (x - mean) / std), shape
  raise ValueError(
      f"the evaluation preprocessing op {name!r} cannot be embedded in a StableHLO or ONNX "
      f"artifact (those take: {', '.join(JAX_OPS)}); export with --no-preprocess, give "
      "--eval_pp with those ops only, or use --format savedmodel (any op)")


JAX_OPS = ("rgb", "resize", "resize_shorter", "center_crop", "normalize")


def jax_preprocessing(eval_pp: str, shape: tuple[int, int, int]):
  """`(fn, out_shape)`: `fn(images uint8 [B, H, W, C]) -> float32 [B, H', W', C']`, the
  ops of `eval_pp` in jax.numpy (`JAX_OPS`) for images of `shape` (H, W, C)."""
  preprocess.build(eval_pp)  # the ops and their arguments, checked as the pipeline does
  ops = []
  for op in _ops(eval_pp):
    fn, shape = _jnp_op(*op, shape)
    ops.append(fn)

  def fn(images):
    x = images.astype(jnp.float32)
    for op in ops:
      x = op(x)
    return x
  return fn, shape


# ------------------------------------------------------------------------------- shapes

def _network_input(classifier: inference.Classifier) -> tuple[int, int, int]:
  """`(S, S, C)` of the network's preprocessed input: from the run's data when `source` is
  a workdir, else the last fixed size `eval_pp` gives, 3 channels."""
  run = inference.run_dir(classifier.source)
  config = workdir_lib.saved_config(run) if run else None
  if config is not None:
    dc = config.data
    try:
      builder = data.load_builder(dc.name, dc.data_dir)
      split = dc.eval_split or data.default_eval_split(builder)
      shape = data.image_shape(builder, split, classifier.eval_pp, dc.image_key)
      if len(shape) == 3:
        return shape
    except (FileNotFoundError, ValueError):  # data not here: take the size from eval_pp
      pass
  sizes = [_size_hw(_size_arg(a, k)) for n, a, k in _ops(classifier.eval_pp) if n in _SIZE_OPS]
  if not sizes:
    raise ValueError(
        f"cannot tell the network's input size from eval_pp {classifier.eval_pp!r} (no "
        "center_crop or resize) without the run's data set: give --eval_pp ending in one")
  return (*sizes[-1], 3)


def _raw_size(eval_pp: str, network: tuple[int, int, int]) -> tuple[int, int]:
  """Default raw image size of a fixed-size artifact with preprocessing: the square the
  first resize gives, else the network's input size."""
  for name, args, kwargs in _ops(eval_pp):
    if name in ("resize", "resize_shorter"):
      return _size_hw(_size_arg(args, kwargs))
  return network[:2]


# ------------------------------------------------------------------------------ formats

def _function(classifier: inference.Classifier, preprocess_fn=None):
  """`fn(images) -> logits`: preprocessing (if given) then `classifier.logits`."""
  def fn(images):
    x = images if preprocess_fn is None else preprocess_fn(images)
    return classifier.logits(x)
  return fn


def _export_stablehlo(fn, input_shape, dtype, out: str) -> None:
  (batch,) = jax.export.symbolic_shape("b")
  exported = jax.export.export(jax.jit(fn))(jax.ShapeDtypeStruct((batch, *input_shape), dtype))
  with open(out, "wb") as f:
    f.write(exported.serialize())


@contextlib.contextmanager
def _unoptimised_jax2onnx():
  """jax2onnx without its own graph rewrites: in jax2onnx 0.17 they mis-lay out the
  residual additions of ResNets (an NCHW operand added to an NHWC one); the runtime
  optimises the graph when it loads it."""
  from jax2onnx.converter import ir_optimizations  # noqa: PLC0415 (an optional extra)
  passes = ir_optimizations._OPTIMIZER_PASSES  # noqa: SLF001
  ir_optimizations._OPTIMIZER_PASSES = ()  # noqa: SLF001
  try:
    yield
  finally:
    ir_optimizations._OPTIMIZER_PASSES = passes  # noqa: SLF001


def _export_onnx(fn, input_shape, dtype, out: str) -> None:
  try:
    import jax2onnx  # noqa: PLC0415 (an optional extra)
  except ImportError:
    raise ImportError(
        "ONNX export needs jax2onnx: pip install onnx onnx-ir onnxruntime && pip install "
        "--no-deps jax2onnx==0.17.1 (its orbax-checkpoint<0.11.37 pin would downgrade the "
        "orbax-checkpoint gcp needs; the converter does not use orbax)") from None
  for name in ("jax2onnx", "onnx_ir"):  # its optional plugins' imports, untyped constants
    logging.getLogger(name).setLevel(logging.ERROR)
  (batch,) = jax.export.symbolic_shape("B")
  with _unoptimised_jax2onnx():
    jax2onnx.to_onnx(fn, [jax.ShapeDtypeStruct((batch, *input_shape), dtype)],
                     opset=ONNX_OPSET, return_mode="file", output_path=out,
                     input_names=["images"], output_names=["logits"])


def _export_savedmodel(classifier, input_shape, preprocessed: bool, out: str) -> None:
  import tensorflow as tf  # noqa: PLC0415 (gcp.data imports it anyway)
  from jax.experimental import jax2tf  # noqa: PLC0415

  leaves, tree = jax.tree.flatten(classifier.variables)
  module = tf.Module()
  # Variables rather than constants: the graph stays small and TF Serving loads them as such.
  module.params = [tf.Variable(np.asarray(leaf), trainable=False) for leaf in leaves]
  network = jax2tf.convert(
      lambda leaves, x: classifier.logits(x, jax.tree.unflatten(tree, leaves)),
      polymorphic_shapes=[None, "(b, ...)"], with_gradient=False)
  if preprocessed:
    pre = preprocess.build(classifier.eval_pp)
    spec = tf.TensorSpec([None, None, None, 3], tf.uint8)

    one = tf.function(lambda im: pre(im, tf.zeros([2], tf.int64)), autograph=False)
    shape = one.get_concrete_function(tf.TensorSpec([None, None, 3], tf.uint8)).output_shapes
    if not shape.is_fully_defined():  # no resize or crop: images come at the network's size
      shape = tf.TensorShape(input_shape)

    def prepare(images):  # the pipeline's own ops, image by image ([V, S, S, C] if views)
      return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec(shape, tf.float32))
  else:
    spec = tf.TensorSpec([None, *input_shape], tf.float32)
    prepare = tf.identity

  @tf.function(input_signature=[spec], autograph=False)
  def serve(images):
    return {"logits": network(module.params, prepare(images))}
  module.serve = serve
  tf.saved_model.save(module, out, signatures={"serving_default": serve})


def _version() -> str:
  try:
    return metadata.version("gcp")
  except metadata.PackageNotFoundError:
    return "unknown"


def export(source: str, out: str, *, format: str = "savedmodel", preprocess: bool = True,
           image_size: tuple[int, int] | None = None, eval_pp: str | None = None,
           step: int | None = None, weights: str | None = None) -> dict:
  """Writes the model at `source` as a `format` artifact at `out`, and its metadata next to
  it (`metadata_path(out)`); returns the metadata.

  Args:
    source: a workdir, checkpoint directory, step folder, converted checkpoint or
      `pretrained:NAME` (`gcp.inference.load`).
    out: the file (stablehlo, onnx) or directory (savedmodel) to write; replaced if it
      exists.
    format: one of `FORMATS`.
    preprocess: include the evaluation preprocessing (raw uint8 images in); else the bare
      network on preprocessed float32 images.
    image_size: (H, W) of the raw images a StableHLO or ONNX artifact with preprocessing
      takes (default: see the module docstring).
    eval_pp, step, weights: as `gcp.inference.load`.

  Raises:
    ValueError: unknown format; a video model with preprocessing; an `eval_pp` op that
      cannot be embedded; no way to tell the input size.
  """
  if format not in FORMATS:
    raise ValueError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}")
  classifier = inference.load(source, step=step, eval_pp=eval_pp, weights=weights,
                              portable=True)
  if classifier.video:
    raise ValueError(f"{classifier.spec['arch']} is a video model: gcp.export writes image "
                     "classifiers only")
  head = classifier.spec["head"]
  if format == "onnx" and head in _NOT_ONNX:
    raise ValueError(f"the {head} head does not export to ONNX: {_NOT_ONNX[head]}; export it "
                     "with --format savedmodel or --format stablehlo")
  network = _network_input(classifier)
  if preprocess and format != "savedmodel":
    raw = (*(image_size or _raw_size(classifier.eval_pp, network)), 3)
    pre, produced = jax_preprocessing(classifier.eval_pp, raw)
    if produced != network:
      raise ValueError(f"eval_pp {classifier.eval_pp!r} makes {raw} images {produced}, but "
                       f"the network takes {network}")
    fn, input_shape, dtype = _function(classifier, pre), raw, jnp.uint8
  else:
    fn, input_shape, dtype = _function(classifier), network, jnp.float32
  tmp = f"{os.path.normpath(out)}.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  if format == "stablehlo":
    _export_stablehlo(fn, input_shape, dtype, tmp)
  elif format == "onnx":
    _export_onnx(fn, input_shape, dtype, tmp)
  else:
    _export_savedmodel(classifier, network, preprocess, tmp)
  if os.path.isdir(out):
    shutil.rmtree(out)
  os.replace(tmp, out)
  raw_input = preprocess and format == "savedmodel"
  info = {
      "format": format, "arch": classifier.spec["arch"], "head": classifier.spec["head"],
      "model": classifier.spec, "num_classes": classifier.spec["num_classes"],
      "input": {"name": "images", "dtype": "uint8" if preprocess else "float32",
                "shape": [None, None, None, 3] if raw_input else [None, *input_shape]},
      "output": {"name": "logits", "dtype": "float32",
                 "shape": [None, classifier.spec["num_classes"]]},
      "preprocessing": {"included": preprocess, "eval_pp": classifier.eval_pp,
                        "network_input": list(network), "flip": classifier.flip},
      "normalization": _normalization(classifier.eval_pp),
      "isqrt": "newton_schulz", "class_names": classifier.class_names,
      "source": {"checkpoint": classifier.source, "step": classifier.step,
                 "weights": classifier.weights},
      "gcp_version": _version(), "jax_version": jax.__version__,
  }
  if format == "onnx":
    info["onnx_opset"] = ONNX_OPSET
  workdir_lib.write_atomic(metadata_path(out), json.dumps(info, indent=2))
  return info


def _normalization(eval_pp: str) -> dict | None:
  for name, args, kwargs in _ops(eval_pp):
    if name == "normalize":
      mean, std = preprocess.mean_std(*args, **kwargs)
      return {"mean": list(np.broadcast_to(mean, 3).tolist()),
              "std": list(np.broadcast_to(std, 3).tolist()), "units": "0-255"}
  return None


def _size(text: str) -> tuple[int, int]:
  parts = text.lower().replace("x", ",").split(",")
  try:
    size = tuple(int(p) for p in parts)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: give H,W or one size, e.g. 256") from None
  return (size * 2)[:2] if len(size) == 1 else size


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gcp.export", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Example: python -m gcp.export runs/digits digits.onnx --format onnx")
  parser.add_argument("source", help="workdir, checkpoint directory, step folder, "
                      "gcp.convert output or pretrained:NAME")
  parser.add_argument("out", help="file (stablehlo, onnx) or directory (savedmodel)")
  parser.add_argument("--format", choices=FORMATS, default="savedmodel")
  parser.add_argument("--no-preprocess", dest="preprocess", action="store_false",
                      help="the bare network on preprocessed float32 images")
  parser.add_argument("--image_size", type=_size, default=None,
                      help="H,W of the raw images a stablehlo/onnx artifact takes")
  parser.add_argument("--eval_pp", default=None, help="override the evaluation preprocessing")
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--weights", choices=inference.WEIGHTS, default=None,
                      help="default: the EMA parameters when the run kept them")
  args = parser.parse_args(argv)
  try:
    info = export(args.source, args.out, format=args.format, preprocess=args.preprocess,
                  image_size=args.image_size, eval_pp=args.eval_pp, step=args.step,
                  weights=args.weights)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  shape = "x".join("BHW"[i] if d is None else str(d)
                   for i, d in enumerate(info["input"]["shape"]))
  print(f"wrote {args.out} ({info['format']}: {info['input']['dtype']} images {shape} -> "
        f"logits Bx{info['num_classes']}; {info['arch']}+{info['head']}) and "
        f"{metadata_path(args.out)}")
  return 0


if __name__ == "__main__":
  import gcp.pretrained  # noqa: F401,PLC0415 (pretrained:NAME sources)
  runtime.exit_quickly(main())
