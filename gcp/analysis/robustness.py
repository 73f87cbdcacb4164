"""Robustness to ImageNet-C-style corruptions: top-1 error per corruption and severity, and
the corruption error (CE) and its mean (mCE) relative to a baseline model.

The corruptions (`gcp.data.corruptions`) run in the input pipeline, inserted into the
evaluation preprocessing just before `normalize` (after the crop, as ImageNet-C corrupts
the 224 px centre crop). Following Hendrycks & Dietterich (2019), with E the top-1 error:

  CE_c          = sum_s E_{s,c} / sum_s E^base_{s,c}
  relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean)

over severities s, and mCE / relative mCE their means over the corruptions c.

The corruptions follow ImageNet-C except where `gcp.data.corruptions`' docstring says
otherwise; every result says so (`corruptions`) and names the frost used (`frost`: the
procedural texture, or ImageNet-C's photos given as `frost_dir`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from gcp import data, reporting, train
from gcp.analysis import runs
from gcp.data.corruptions import (CORRUPTIONS, SEVERITIES, STATEMENT, corruption,
                                  frost_source)
import tensorflow as tf  # (after gcp.data, which imports it without Keras)


def corrupted_pp(pp: str, name: str, severity: int, frost_dir: str | None = None) -> str:
  """`pp` with `corrupt(name, severity)` inserted before its first `normalize` op (at the
  end if it has none); for frost with `frost_dir`, `corrupt('frost', s, frost_dir=...)`."""
  ops = [op.strip() for op in pp.split("|") if op.strip()]
  at = next((i for i, op in enumerate(ops) if op.split("(")[0].strip() == "normalize"),
            len(ops))
  photos = f", frost_dir={frost_dir!r}" if name == "frost" and frost_dir is not None else ""
  return "|".join(ops[:at] + [f"corrupt({name!r}, {severity}{photos})"] + ops[at:])


def corruption_errors(model, variables: dict, builder, *, split: str, pp: str,
                      batch_size: int, corruptions=CORRUPTIONS, severities=SEVERITIES,
                      frost_dir: str | None = None, image_key: str = "image",
                      label_key: str = "label") -> dict:
  """Top-1 error of the model on `split` clean and under each corruption and severity.

  Args:
    model, variables: the network and its variables.
    builder: the data set (`gcp.data.load_builder`).
    split, pp: evaluation split and preprocessing (e.g. the run's `eval_split`,
      `eval_pp`).
    batch_size: evaluation batch, divisible by the device count.
    corruptions, severities: which to run (default: all 15 at 1-5).
    frost_dir: a folder of ImageNet-C's frost photos for the exact frost (default: the
      procedural texture; `gcp.data.corruptions`).

  Returns:
    `clean_error`, `errors` (`{corruption: [error per severity]}`), `severities`,
    `split`, `examples`, `corruptions` (how they relate to ImageNet-C) and `frost` (which
    frost was used).
  """
  mesh = train.make_mesh()
  variables = jax.device_put(variables, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  params = variables["params"]
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None,
                           model_state={k: v for k, v in variables.items() if k != "params"})
  eval_step = train.make_eval_step(model)

  def error(eval_pp):
    batches = data.eval_batches(builder, split=split, pp=eval_pp, per_host_batch=batch_size,
                                image_key=image_key, label_key=label_key)
    result = train.evaluate(eval_step, state, batches, mesh)
    return 1.0 - result["eval_top1"], result["eval_examples"]

  bar = reporting.progress_bar(1 + len(corruptions) * len(severities), 0,
                               desc="corruptions")
  clean, examples = error(pp)
  bar.update()
  errors = {}
  for name in corruptions:
    errors[name] = []
    for severity in severities:
      bar.set_postfix(corruption=f"{name} {severity}")
      errors[name].append(error(corrupted_pp(pp, name, severity, frost_dir))[0])
      bar.update()
  bar.close()
  return {"clean_error": clean, "errors": errors, "severities": list(severities),
          "split": split, "examples": examples, **_provenance(frost_dir)}


def _provenance(frost_dir: str | None) -> dict:
  return {"corruptions": STATEMENT, "frost": frost_source(frost_dir)}


def corruption_errors_of(run: runs.Run, split: str | None = None, batch_size: int = 128,
                         corruptions=CORRUPTIONS, severities=SEVERITIES,
                         frost_dir: str | None = None) -> dict:
  """`corruption_errors` of a loaded run (`runs.load_run`) on `split` (default: its
  evaluation split) with its evaluation preprocessing."""
  return corruption_errors(
      run.model, run.variables, runs.builder_of(run), split=split or run.data.eval_split,
      pp=run.data.eval_pp, batch_size=batch_size, corruptions=corruptions,
      severities=severities, frost_dir=frost_dir, image_key=run.data.image_key,
      label_key=run.data.label_key)


def corruption_summary(result: dict, baseline: dict | None = None) -> dict:
  """Mean error per corruption and overall; with a `baseline` result (the same corruptions
  and severities, e.g. of the GAP model) also CE, mCE, relative CE and relative mCE.

  A CE whose baseline error is zero, or a relative CE whose baseline degradation is zero,
  is NaN (undefined). The summary repeats the result's `corruptions` and `frost`.
  """
  errors = {name: np.asarray(e, np.float64) for name, e in result["errors"].items()}
  summary = {"clean_error": result["clean_error"],
             "mean_error": {name: float(e.mean()) for name, e in errors.items()},
             **{k: result[k] for k in ("corruptions", "frost") if k in result}}
  summary["mean_corruption_error"] = float(np.mean(list(summary["mean_error"].values())))
  if baseline is None:
    return summary
  missing = [n for n in errors if n not in baseline["errors"]]
  if missing or baseline["severities"] != result["severities"]:
    raise ValueError(f"the baseline lacks corruptions {missing} or has other severities "
                     f"({baseline['severities']} vs {result['severities']}): evaluate it "
                     "with the same corruptions and severities")
  if "frost" in errors and result.get("frost") != baseline.get("frost"):
    raise ValueError(f"the result's frost ({result.get('frost')}) is not the baseline's "
                     f"({baseline.get('frost')}): evaluate both with the same frost_dir")
  ce, relative = {}, {}
  for name, e in errors.items():
    base = np.asarray(baseline["errors"][name], np.float64)
    ce[name] = float(e.sum() / base.sum()) if base.sum() != 0 else float("nan")
    degradation = (base - baseline["clean_error"]).sum()
    relative[name] = (float((e - result["clean_error"]).sum() / degradation)
                      if degradation != 0 else float("nan"))
  summary.update(ce=ce, mce=float(np.mean(list(ce.values()))), relative_ce=relative,
                 relative_mce=float(np.mean(list(relative.values()))))
  return summary


def corrupted_examples(image, corruptions=CORRUPTIONS, severities=SEVERITIES,
                       seed: int = 0, frost_dir: str | None = None) -> dict:
  """`{corruption: [image at each severity]}` for one `[H, W, C]` image in 0-255 (numpy),
  e.g. for `plots.plot_corrupted`."""
  image = tf.constant(np.asarray(image, np.float32))
  seed = tf.constant([seed, 0], tf.int64)
  return {name: [corruption(name, s, frost_dir if name == "frost" else None)(image, seed)
                 .numpy() for s in severities]
          for name in corruptions}
