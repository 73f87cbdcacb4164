"""Loss landscape along the gradient at a layer's activation (loss variation and gradient
predictiveness, as in Santurkar et al. 2018 and the GCP_Optimization release).

For the activation y of one layer and g the gradient of each example's loss with respect
to its own activation (g = d sum_i loss_i / dy, so its scale does not depend on the batch
size), the sweep records for each step size eta

  loss(eta)        = mean_i loss_i(y + eta g)
  grad_change(eta) = sqrt(mean_i ||g_i(y + eta g) - g_i||^2)

over a fixed set of batches; `grad_norm` = sqrt(mean_i ||g_i||^2). A smoother landscape
varies less in loss and keeps its gradient (small grad_change) over the same steps.
Positive eta steps up the gradient, negative down. d loss / d eta at 0 is grad_norm^2.
"""
import jax
import jax.numpy as jnp
import numpy as np

from gcp import reporting
from gcp.analysis import probe, runs

# Steps that move the embedded digits demo's loss visibly (per-example gradient norms
# ~0.1 at the head's input); the useful range scales with 1 / grad_norm^2.
DEFAULT_ETAS = (-64.0, -32.0, -16.0, -8.0, 0.0, 8.0, 16.0, 32.0, 64.0)


def make_landscape_sums(model, layer: str, etas, *, train: bool = False,
                        label_smoothing: float = 0.0):
  """Jitted `(variables, batch) -> sums` over the batch's real examples: `loss` `[E]` and
  `grad_change_sq` `[E]` (per step size of `etas`), `grad_sq` and `count` (scalars). Sums
  over batches combine by addition (`summarize`).

  `train`: BatchNorm on the batch's statistics (as in a training step; updates discarded)
  instead of its running averages (`TrainingLandscape` uses it during training).
  """
  etas = jnp.asarray(etas, jnp.float32)

  def sums(variables, batch):
    def loss_of(delta):
      with probe.perturbed(layer, delta):
        return probe.summed_loss(model, variables, batch, train=train,
                                 label_smoothing=label_smoothing)[0]
    shape = jax.eval_shape(lambda: probe.capture(model, variables, batch["image"], layer,
                                                 train=train))
    grad_of = jax.value_and_grad(loss_of)
    _, g = grad_of(jnp.zeros(shape.shape, shape.dtype))

    def at(eta):
      loss, grad = grad_of(eta * g)
      return loss, jnp.sum(jnp.square(grad - g))
    losses, changes = jax.lax.map(at, etas)
    count = jnp.sum(batch["mask"]) if "mask" in batch else jnp.float32(g.shape[0])
    return {"loss": losses, "grad_change_sq": changes, "grad_sq": jnp.sum(jnp.square(g)),
            "count": count.astype(jnp.float32)}
  return jax.jit(sums)


def summarize(sums: dict, etas) -> dict:
  """Summed `make_landscape_sums` outputs -> per-example means: `eta`, `loss`,
  `grad_change` (lists over `etas`), `grad_norm`, `examples`, and the two scalars to log
  during training: `loss_range` (max - min of the loss over the steps) and
  `grad_change_max`."""
  sums = jax.device_get(sums)
  n = float(sums["count"])
  loss = np.asarray(sums["loss"], np.float64) / n
  change = np.sqrt(np.asarray(sums["grad_change_sq"], np.float64) / n)
  return {"eta": [float(e) for e in etas], "loss": loss.tolist(),
          "grad_change": change.tolist(), "grad_norm": float(np.sqrt(sums["grad_sq"] / n)),
          "examples": int(n), "loss_range": float(loss.max() - loss.min()),
          "grad_change_max": float(change.max())}


def gradient_landscape(model, variables: dict, batches, *, layer: str | None = None,
                       etas=DEFAULT_ETAS, train: bool = False,
                       label_smoothing: float = 0.0) -> dict:
  """The sweep over `batches` (a list of batch dicts; see the module doc).

  Args:
    model, variables: the network and its variables (`{"params", "batch_stats", ...}`).
    batches: fixed batches (`gcp.analysis.runs.fixed_batches`), with `mask` if padded.
    layer: module path (`probe.layer_names`); default the backbone's output, the input of
      the pooling head (`probe.default_layer`).
    etas: step sizes.
    train: BatchNorm in training mode (see `make_landscape_sums`); needs unpadded
      batches.

  Returns:
    `summarize`'s dict with `layer` and `train`.
  """
  batches = list(batches)
  if train:
    runs.check_unpadded(batches)
  layer = layer or probe.default_layer(model, variables, batches[0]["image"])
  sums_fn = make_landscape_sums(model, layer, etas, train=train,
                                label_smoothing=label_smoothing)
  total = None
  bar = reporting.progress_bar(len(batches), 0, desc=f"landscape at {layer}")
  for batch in batches:
    out = sums_fn(variables, batch)
    total = out if total is None else jax.tree.map(jnp.add, total, out)
    bar.update()
  bar.close()
  return {"layer": layer, "train": train, **summarize(total, etas)}


class TrainingLandscape:
  """The landscape on the current training batch, to log every k steps of training:
  `(params, model_state, batch) -> {"landscape_loss_range", "landscape_grad_change_max",
  "landscape_grad_norm"}` (BatchNorm in training mode, as the step itself; label smoothing
  as in training). Call it before the step that donates the state.

  Args:
    model: the network being trained.
    etas: step sizes.
    layer: module path; default the head's input (`probe.default_layer`), found at the
      first call.
    label_smoothing: the training loss's.
  """

  def __init__(self, model, etas=DEFAULT_ETAS, layer: str | None = None,
               label_smoothing: float = 0.0):
    self.model, self.etas, self.layer = model, tuple(etas), layer
    self.label_smoothing = label_smoothing
    self._sums = None

  def __call__(self, params, model_state: dict, batch: dict) -> dict:
    variables = {"params": params, **model_state}
    if self._sums is None:
      self.layer = self.layer or probe.default_layer(self.model, variables, batch["image"])
      self._sums = make_landscape_sums(self.model, self.layer, self.etas, train=True,
                                       label_smoothing=self.label_smoothing)
    summary = summarize(self._sums(variables, batch), self.etas)
    return {f"landscape_{key}": summary[key]
            for key in ("loss_range", "grad_change_max", "grad_norm")}


def training_probe(model, config) -> TrainingLandscape:
  """What `config.landscape_every_steps` logs during training (`gcp.train.Probe`): the
  landscape along `config.landscape_etas` with the run's label smoothing."""
  return TrainingLandscape(model, config.landscape_etas,
                           label_smoothing=config.optim.label_smoothing)
