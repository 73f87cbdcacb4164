"""A model seen from inside: its layers, their activations, and its loss as a function of
its parameters or of one layer's activation.

Layers are named by their module path joined with "/" ("layer4_1", "head/reduce", "fc"),
the names of the parameter tree. Activations are read and perturbed at a distance with
`flax.linen.intercept_methods`, so any model of the zoo works unchanged (no `sow` or
`perturb` calls in its code).
"""
import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from gcp.train import cross_entropy

HEAD = "head"  # create_model's pooling head (and, for ViTs, the classifier with it)


def _name(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.path)


def logits(model: nn.Module, variables: dict, images, *, train: bool = False):
  """`model.apply` in either mode. In training mode BatchNorm uses the batch's statistics
  (their updates are discarded) and dropout a fixed key, so that the loss is a
  deterministic function of the parameters and activations."""
  if not train:
    return model.apply(variables, images, train=False)
  out, _ = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(0)},
                       mutable=["batch_stats", "intermediates"])
  return out


def layer_names(model: nn.Module, variables: dict, images) -> list[str]:
  """Every module the forward pass of `images` calls, in call order (outer before inner)."""
  names = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      name = _name(context.module)
      if name and name not in names:
        names.append(name)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: logits(model, v, x), variables, images)
  return names


def default_layer(model: nn.Module, variables: dict, images) -> str:
  """The last top-level module before the head: the backbone's output, which the pooling
  head (first- or second-order) receives."""
  names = [n for n in layer_names(model, variables, images) if "/" not in n]
  if HEAD not in names or names.index(HEAD) == 0:
    raise ValueError(f"cannot find the layer before the head {HEAD!r} among {names}; "
                     "name a layer explicitly")
  return names[names.index(HEAD) - 1]


def _check_found(found: int, layer: str, model, variables, images, method: str) -> None:
  if found == 1:
    return
  if found == 0:
    raise ValueError(f"the model has no layer {layer!r} with a method {method!r}; its "
                     f"layers: {', '.join(layer_names(model, variables, images))}")
  raise ValueError(f"layer {layer!r} is called {found} times in one forward pass; pick a "
                   "layer that is called once")


def capture(model: nn.Module, variables: dict, images, layer: str, *,
            method: str = "__call__", inputs: bool = False, train: bool = False):
  """The output of `layer`'s `method` (or with `inputs`, its first argument) for `images`.

  Jit-compatible; `method` may be any method of the module (e.g. a second-order head's
  `features`).
  """
  found = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == method and _name(context.module) == layer:
      found.append(args[0] if inputs else out)
    return out
  with nn.intercept_methods(record):
    logits(model, variables, images, train=train)
  _check_found(len(found), layer, model, variables, images, method)
  return found[0]


@contextlib.contextmanager
def perturbed(layer: str, delta):
  """Within the context, the output of `layer` is shifted by `delta` (same shape), so that
  a function of `delta` is the model as a function of that activation."""
  def shift(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and _name(context.module) == layer:
      return out + delta.astype(out.dtype)
    return out
  with nn.intercept_methods(shift):
    yield


def summed_loss(model: nn.Module, variables: dict, batch: dict, *, train: bool = False,
                label_smoothing: float = 0.0):
  """Cross-entropy summed over the batch's real examples (`batch["mask"]`, if present,
  marks them) and their number, as (loss, count). Summed rather than averaged, so that
  gradients are per-example and sums over batches add up."""
  out = logits(model, variables, batch["image"], train=train)
  mask = batch.get("mask")
  mask = jnp.ones(out.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
  return jnp.sum(cross_entropy(out, batch["label"], label_smoothing) * mask), jnp.sum(mask)
