"""Transfer: a linear probe of a frozen network's representation on another task.

The representation is the classifier's input (for a CNN of the zoo, the pooling head's
output: the GAP vector, or iSQRT-COV's upper triangle), computed with BatchNorm's running
statistics and without augmentation. The probe is multinomial logistic regression on the
standardised features (the training examples' mean and std), fitted to convergence by
L-BFGS with an L2 penalty chosen from `L2_GRID` on a held-out fifth of the probe's training
examples, then refitted on all of them and scored on the task's test split.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gcp import data, reporting
from gcp.analysis import probe, runs

L2_GRID = (1e-4, 1e-3, 1e-2)  # penalty on the mean loss: lambda / 2 * ||W||^2
VALIDATION_FRACTION = 0.2
FIT_STEPS = 200


def classifier_layer(model, variables: dict, images) -> str:
  """The last module the forward pass calls: the classifier of every model of the zoo
  (`fc` of the CNNs, the head's classifier of the token models)."""
  return probe.layer_names(model, variables, images)[-1]


def extract(model, variables: dict, *batch_sets, layer: str | None = None) -> list:
  """The input of `layer` (default `classifier_layer`) for the real examples of each set of
  `batch_sets` (iterables of dicts `image`, `label`, optional `mask`): per set, float32
  features `[N, D]` and labels `[N]` (numpy), all from one compiled function."""
  fn, out = None, []
  for batches in batch_sets:
    features, labels = [], []
    bar = reporting.progress_bar(None, 0, desc="features")
    for batch in batches:
      if fn is None:
        layer = layer or classifier_layer(model, variables, batch["image"])
        fn = jax.jit(lambda v, x: probe.capture(model, v, x, layer, inputs=True))
      y = np.asarray(fn(variables, batch["image"]), np.float32)
      keep = batch["mask"].astype(bool) if "mask" in batch else slice(None)
      features.append(y.reshape(y.shape[0], -1)[keep])
      labels.append(np.asarray(batch["label"])[keep])
      bar.update()
    bar.close()
    if not features:
      raise ValueError("no batches to extract features from")
    out.append((np.concatenate(features), np.concatenate(labels)))
  return out


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_logistic(x, y, l2, *, num_classes: int, steps: int = FIT_STEPS) -> dict:
  """Multinomial logistic regression: `{"w": [D, K], "b": [K]}` minimising the mean
  cross-entropy of `x @ w + b` on labels `y` plus `l2 / 2 * ||w||^2`, by `steps` of L-BFGS
  (a convex problem: it converges from zeros)."""
  def loss(params):
    logits = x @ params["w"] + params["b"]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return nll + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(params, updates), state), value
  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
  return params


def top1(params: dict, x, y) -> float:
  return float(np.mean(np.argmax(np.asarray(x @ params["w"] + params["b"]), -1) == y))


def linear_probe(train_xy, test_xy, num_classes: int, *, l2_grid=L2_GRID,
                 seed: int = 0) -> dict:
  """Fits the probe on `train_xy` (features `[N, D]`, labels `[N]`) and scores it on
  `test_xy` (see the module doc).

  Returns:
    `top1` (on the test examples), `l2` (the penalty chosen), `validation_top1` (per
    penalty of `l2_grid`), `train_top1` (of the refitted probe), `dim`, `train_examples`,
    `test_examples`.
  """
  (x, y), (tx, ty) = train_xy, test_xy
  mean, std = x.mean(0), x.std(0) + 1e-6
  x, tx = (x - mean) / std, (tx - mean) / std
  order = np.random.default_rng(seed).permutation(len(y))
  n_val = max(1, int(round(VALIDATION_FRACTION * len(y))))
  val, fit = order[:n_val], order[n_val:]
  scores = [top1(fit_logistic(x[fit], y[fit], l2, num_classes=num_classes), x[val], y[val])
            for l2 in l2_grid]
  l2 = l2_grid[int(np.argmax(scores))]
  params = fit_logistic(x, y, l2, num_classes=num_classes)
  return {"top1": top1(params, tx, ty), "l2": l2,
          "validation_top1": dict(zip(map(str, l2_grid), scores)),
          "train_top1": top1(params, x, y), "dim": int(x.shape[1]),
          "train_examples": int(len(y)), "test_examples": int(len(ty))}


def linear_probe_of(run: runs.Run, *, name: str, train_split: str, test_split: str,
                    pp: str | None = None, data_dir: str | None = None,
                    batch_size: int = 256, image_key: str = "image",
                    label_key: str = "label") -> dict:
  """`linear_probe` of a loaded run's representation on the data set `name` (a TFDS name
  or `folder:` path, as `config.data.name`), fitted on `train_split` and scored on
  `test_split`, both with preprocessing `pp` (default: the run's evaluation
  preprocessing). Returns `linear_probe`'s dict with `task` (the data set and splits)."""
  builder = data.load_builder(name, data_dir)
  pp = pp or run.data.eval_pp

  def batches(split):
    return data.eval_batches(builder, split=split, pp=pp, per_host_batch=batch_size,
                             image_key=image_key, label_key=label_key)
  train_xy, test_xy = extract(run.model, run.variables, batches(train_split),
                              batches(test_split))
  result = linear_probe(train_xy, test_xy, data.num_classes(builder, label_key))
  return {**result, "task": f"{name}: fit on {train_split}, scored on {test_split}"}
