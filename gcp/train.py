"""Training and evaluation: optimizer, train/eval steps, the loop, `train_and_evaluate()`.

Data parallelism is `jax.jit` over a 1-D `data` mesh of every device: the batch is sharded
along it and the state replicated, so BatchNorm statistics and gradients are taken over
the global batch exactly as on one device.
"""
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import threading
import time
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from gcp import checkpoint, data, reporting, runtime
from gcp import config as config_lib
from gcp import workdir as workdir_lib
from gcp.data import mixup
from gcp.models import VIDEO_ARCHS, create_model


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue: arrays only, so it checkpoints as a plain tree.

  `model_state` holds the model's non-trainable collections: `batch_stats` (BatchNorm
  statistics) and, for heads that have them, `constants` (e.g. CBP's sketch).
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  ema_params: Any = None  # EMA of the trained parameters (optim.ema_decay > 0), else None


# --------------------------------------------------------------------------- optimizer

def base_learning_rate(optim: ml_collections.ConfigDict, batch_size: int) -> float:
  """`optim.learning_rate`, scaled linearly to `batch_size` when the recipe names the batch
  it was tuned for (`optim.lr_reference_batch`; Goyal et al. 2017's linear scaling rule)."""
  if optim.lr_reference_batch:
    return optim.learning_rate * batch_size / optim.lr_reference_batch
  return optim.learning_rate


def learning_rate_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_epochs: int, batch_size: int | None = None) -> optax.Schedule:
  """Per-step learning rate from a schedule written in epochs (SPEC §3).

  `step`: multiply by `decay_factor` at each of `decay_epochs`; `cosine`: to
  `min_learning_rate` at the end, or `cooldown_epochs` before it and constant from there
  (timm's cooldown); `constant`; `poly`: lr * (1 - e / poly_epochs) ** poly_power in epoch
  e = 0, 1, ... (GCP_Optimization's LRfast: 52, 11; LRadju: 49, 2). `warmup_epochs` of
  linear warmup from `warmup_init_lr` precede any of them. With `batch_size`, the rate
  follows `base_learning_rate`.
  """
  lr = (optim.learning_rate if batch_size is None
        else base_learning_rate(optim, batch_size))
  warmup = int(round(optim.warmup_epochs * steps_per_epoch))
  total = num_epochs * steps_per_epoch
  if optim.schedule == "step":
    main = optax.piecewise_constant_schedule(
        lr, {int(round(e * steps_per_epoch)) - warmup: optim.decay_factor
             for e in optim.decay_epochs})
  elif optim.schedule == "cosine":
    cooldown = int(round(optim.cooldown_epochs * steps_per_epoch))
    main = optax.cosine_decay_schedule(lr, decay_steps=max(total - warmup - cooldown, 1),
                                       alpha=optim.min_learning_rate / lr)
  elif optim.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif optim.schedule == "poly":
    def main(step):
      epoch = (step + warmup) // steps_per_epoch
      return lr * jnp.maximum(1.0 - epoch / optim.poly_epochs, 0.0) ** optim.poly_power
  else:
    raise ValueError(f"unknown config.optim.schedule {optim.schedule!r}; "
                     "valid: step, cosine, constant, poly")
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(optim.warmup_init_lr, lr, warmup), main], [warmup])


# Matrices that are not weights: a ViT's class token and position embedding (timm's
# `no_weight_decay`).
_NOT_DECAYED = ("cls", "pos_embedding")


def weight_decay_mask(params) -> Any:
  """True for conv and dense kernels; norm scales/biases, biases, and a ViT's class token
  and position embedding are not decayed."""
  return flax.traverse_util.path_aware_map(
      lambda path, p: p.ndim > 1 and path[-1] not in _NOT_DECAYED, params)


def classifier_mask(params) -> Any:
  """True for the classifier's parameters: the top-level `fc` (ResNets, ShuffleNetV2,
  Inception-v3) or `classifier*` (VGG's and AlexNet's FC layers, DenseNet's and
  MobileNetV2's one)."""
  return {name: jax.tree.map(lambda _: name == "fc" or name.startswith("classifier"), sub)
          for name, sub in params.items()}


def create_optimizer(optim: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """`optim.optimizer` with weight decay on kernels only (`weight_decay_mask`):

  - 'sgd': momentum (optionally Nesterov) with coupled (PyTorch-style) weight decay;
  - 'adamw': Adam (0.9, 0.999, eps 1e-8) with decoupled decay lr * wd * p, as
    torch.optim.AdamW (the DeiT / Moment Probing recipes).

  With `grad_clip_norm` > 0 the gradient's global norm is clipped first (PyTorch's
  clip_grad_norm_). The classifier's step is `classifier_lr_mult` times larger
  (fast-MPN-COV fine-tunes with x5).
  """
  parts = [optax.clip_by_global_norm(optim.grad_clip_norm)] if optim.grad_clip_norm else []
  if optim.optimizer == "sgd":
    parts += [optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask),
              optax.sgd(schedule, momentum=optim.momentum, nesterov=optim.nesterov)]
  elif optim.optimizer == "adamw":
    parts.append(optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8,
                             weight_decay=optim.weight_decay, mask=weight_decay_mask))
  else:
    raise ValueError(f"unknown config.optim.optimizer {optim.optimizer!r}; valid: sgd, adamw")
  if optim.classifier_lr_mult != 1.0:
    parts.append(optax.masked(optax.scale(optim.classifier_lr_mult), classifier_mask))
  return optax.chain(*parts)


# --------------------------------------------------------------------------- trainable

def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _nested(flat: dict) -> dict:
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def split_trainable(params, pattern: str) -> tuple[dict, dict]:
  """`(trainable, frozen)`: the parameters whose path (e.g. "head/fc_cls/kernel") matches
  the regular expression `pattern` (`re.search`; "" matches all) and the others, as two
  nested dicts of the same layout as `params`."""
  flat = _flat(params)
  if not pattern:
    return params, {}
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"config.trainable_params={pattern!r} is not a regular expression: "
                     f"{e}") from None
  trainable = {k: v for k, v in flat.items() if regex.search(k)}
  if not trainable:
    raise ValueError(f"config.trainable_params={pattern!r} matches no parameter; paths "
                     f"look like {', '.join(list(flat)[:3])}, ...")
  return _nested(trainable), _nested({k: v for k, v in flat.items() if k not in trainable})


def with_params(params, replacement) -> dict:
  """`params` with the leaves of `replacement` (a nested dict of some of its paths, e.g.
  the trainable part or its EMA) put in their place."""
  return _nested({**_flat(params), **_flat(replacement)})


def ema_view(state: "TrainState") -> "TrainState":
  """`state` evaluating its EMA parameters (frozen ones as they are)."""
  return state.replace(params=with_params(state.params, state.ema_params))


# --------------------------------------------------------------------------- steps

def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named `data` over `devices` (default: every device of every host)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_shape, seed: int,
               mesh: jax.sharding.Mesh, *, trainable: str = "",
               ema: bool = False) -> TrainState:
  """Fresh state, replicated over `mesh`. `image_shape` is one input's shape (`(H, W, C)`;
  a video model's `(T, H, W, C)`). The optimizer state (and with `ema` the EMA) covers the
  parameters matching `trainable` only (`split_trainable`)."""
  return _make_init(model, tx, image_shape, seed, mesh, trainable=trainable, ema=ema)()


def _make_init(model: nn.Module, tx: optax.GradientTransformation, image_shape, seed: int,
               mesh: jax.sharding.Mesh, *, trainable: str = "",
               ema: bool = False) -> Callable[[], TrainState]:
  """`init_state` as a jitted `() -> TrainState`: each call a fresh state."""
  def init():
    # rbg: XLA's bit generator compiles in a fraction of threefry's time for a model's worth
    # of parameters; as reproducible for a given JAX version and backend.
    variables = dict(model.init(jax.random.key(seed, impl="rbg"),
                                jnp.zeros((1, *image_shape)), train=False))
    params = variables.pop("params")
    train, _ = split_trainable(params, trainable)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(train), ema_params=train if ema else None)
  return jax.jit(init, out_shardings=NamedSharding(mesh, P()),
                 compiler_options=runtime.compiler_options())


def cross_entropy(logits, labels, label_smoothing: float = 0.0, mix=None):
  """Per-example softmax cross-entropy `[b]` of `logits` `[b, K]` with targets
  (1 - eps) * one_hot + eps / K of `labels` `[b]`; with a mixing matrix `mix` `[b, B]`
  (mixup / cutmix), targets `mix @ targets(labels)` of the batch's B labels."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  if mix is not None:
    targets = mix @ targets
  return optax.softmax_cross_entropy(logits, targets)


def _correct(logits, labels, k):
  """Whether the label is among the top-k logits, per example."""
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    label_smoothing: float, seed: int = 0, accum_steps: int = 1, *,
                    trainable: str = "", ema_decay: float = 0.0, mixing: dict | None = None,
                    aux_loss_weight: float = 0.5):
  """Jitted `(state, batch) -> (state, metrics)`; donates the input state.

  Metrics: `loss`, `top1`, `finite` (False if the loss or a gradient was NaN or inf: the
  update is then not applied and the state returned unchanged), and every scalar the model
  sows into `intermediates` (e.g. DropCov's `drop_rate`). The `dropout` rng of step s is
  fold_in(key(seed), s), so a resumed run draws the same masks.

  The loss is the softmax cross-entropy with label-smoothed targets, plus
  `aux_loss_weight` times that of every auxiliary logits the model sows into the
  `aux_logits` collection (AMS-Net's auxiliary head). Only the parameters matching
  `trainable` (`split_trainable`) are differentiated and updated; `state.opt_state` must
  cover exactly those (`init_state`). With `ema_decay`, `state.ema_params` follows them:
  ema = d * ema + (1 - d) * params after each applied update.

  `mixing`: keyword arguments of `gcp.data.mixup.mix_batch` (mixup_alpha, cutmix_alpha,
  switch_prob): each batch's images and targets are mixed (timm's batch mode), drawn from
  fold_in(key(seed + 1), step); top-1 is still scored against the original labels.

  `accum_steps` > 1 splits the batch into that many micro-batches (examples j, j + k, ...),
  run one after another, and applies their mean gradient once: the update of the whole
  batch at a fraction of the activation memory. BatchNorm normalises and updates its
  statistics per micro-batch, as PyTorch does with accumulation.
  """
  base_key, mix_key = jax.random.key(seed), jax.random.key(seed + 1)

  def grads_and_metrics(train, frozen, model_state, batch, key, batch_labels):
    # With mixing, the micro-batch's rows of the mixing matrix weight the whole batch's
    # labels (`batch_labels`); without, each example has its own label.
    labels, mix = ((batch_labels, batch["mix"]) if "mix" in batch
                   else (batch["label"], None))

    def loss_fn(train):
      logits, updates = model.apply(
          {"params": with_params(frozen, train), **model_state}, batch["image"], train=True,
          mutable=["batch_stats", "intermediates", "aux_logits"], rngs={"dropout": key})
      loss = cross_entropy(logits, labels, label_smoothing, mix).mean()
      for aux in jax.tree.leaves(updates.pop("aux_logits", {})):
        loss += aux_loss_weight * cross_entropy(aux.astype(jnp.float32), labels,
                                                label_smoothing, mix).mean()
      return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(train)
    sown = updates.pop("intermediates", {})
    metrics = {"loss": loss, "top1": _correct(logits, batch["label"], 1).mean()}
    for path, values in flax.traverse_util.flatten_dict(sown).items():
      metrics[path[-1]] = jnp.mean(jnp.stack(values))
    return grads, {**model_state, **updates}, metrics

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(base_key, state.step)
    train, frozen = split_trainable(state.params, trainable)
    if mixing:
      # Mixing the identity gives the mixing matrix: targets mix as the images do.
      eye = jnp.eye(batch["label"].shape[0], dtype=jnp.float32)
      image, mix = mixup.mix_batch(jax.random.fold_in(mix_key, state.step), batch["image"],
                                   eye, **mixing)
      batch = {**batch, "image": image, "mix": mix}
    if accum_steps == 1:
      grads, model_state, metrics = grads_and_metrics(
          train, frozen, state.model_state, batch, key, batch["label"])
    else:
      micro = jax.tree.map(
          lambda x: jnp.moveaxis(x.reshape(x.shape[0] // accum_steps, accum_steps,
                                           *x.shape[1:]), 1, 0), batch)

      def accumulate(carry, inputs):
        grad_sum, model_state = carry
        index, micro_batch = inputs
        grads, model_state, metrics = grads_and_metrics(
            train, frozen, model_state, micro_batch, jax.random.fold_in(key, index),
            batch["label"])
        return (jax.tree.map(jnp.add, grad_sum, grads), model_state), metrics

      zeros = jax.tree.map(jnp.zeros_like, train)
      (grad_sum, model_state), metrics = jax.lax.scan(
          accumulate, (zeros, state.model_state), (jnp.arange(accum_steps), micro))
      grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
      metrics = jax.tree.map(jnp.mean, metrics)
    finite = jnp.isfinite(metrics["loss"]) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    opt_updates, opt_state = tx.update(grads, state.opt_state, train)
    train = optax.apply_updates(train, opt_updates)
    ema = state.ema_params
    if ema is not None:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, train)
    new = state.replace(step=state.step + 1, params=with_params(frozen, train),
                        model_state=model_state, opt_state=opt_state, ema_params=ema)
    # A non-finite step leaves parameters, statistics and optimizer state untouched.
    guarded = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    return guarded.replace(step=state.step + 1), {**metrics, "finite": finite}
  return jax.jit(train_step, donate_argnums=0, compiler_options=runtime.compiler_options())


def eval_logits(model: nn.Module, variables: dict, images, flip: bool = False):
  """Eval-mode logits `[B, K]` of `images` as evaluation scores them. Inputs with one more
  axis than the model takes (`[B, V, H, W, C]` for images, e.g. from the `ten_crop`
  preprocessing op; `[B, V, T, H, W, C]` for a video model, whose `input_rank` is 5) are
  V views per example, scored by their views' mean logits. `flip`: logits averaged over
  the image and its horizontal mirror (fast-MPN-COV's fine-grained test)."""
  input_rank = getattr(model, "input_rank", 4)

  def logits_of(x):
    if x.ndim == input_rank + 1:
      views = model.apply(variables, x.reshape(-1, *x.shape[2:]), train=False)
      return views.reshape(*x.shape[:2], -1).mean(axis=1)
    return model.apply(variables, x, train=False)
  logits = logits_of(images)
  if flip:
    logits = 0.5 * (logits + logits_of(jnp.flip(images, axis=-2)))
  return logits


def make_eval_step(model: nn.Module, flip: bool = False):
  """Jitted `(state, batch) -> sums` of loss, top-1 and top-5 hits and count over the
  unmasked examples (padding carries mask False), of the logits `eval_logits` gives."""

  def eval_step(state: TrainState, batch):
    logits = eval_logits(model, {"params": state.params, **state.model_state},
                         batch["image"], flip)
    mask = batch["mask"]
    k5 = min(5, logits.shape[-1])
    return {"loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
            "top1": jnp.sum(_correct(logits, batch["label"], 1) & mask),
            "top5": jnp.sum(_correct(logits, batch["label"], k5) & mask),
            "count": jnp.sum(mask)}
  return jax.jit(eval_step, compiler_options=runtime.compiler_options())


def shard_batch(batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """This host's numpy batch -> global arrays sharded along the mesh's `data` axis."""
  sharding = NamedSharding(mesh, P("data"))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def evaluate(eval_step, state: TrainState, batches, mesh) -> dict:
  """Loss, top-1 and top-5 over every example of `batches` (padded batches with masks)."""
  sums = None
  for batch in batches:
    out = eval_step(state, shard_batch(batch, mesh))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  n = int(sums["count"])
  return {"eval_loss": float(sums["loss"]) / n, "eval_top1": float(sums["top1"]) / n,
          "eval_top5": float(sums["top5"]) / n, "eval_examples": n}


def evaluate_with_ema(eval_step, state: TrainState, batches, mesh) -> dict:
  """`evaluate` on the batches `batches()` yields, and if the state has an EMA also with
  the EMA parameters, reported as `ema_eval_top1`, `ema_eval_top5`, `ema_eval_loss`."""
  results = evaluate(eval_step, state, batches(), mesh)
  if state.ema_params is not None:
    ema = evaluate(eval_step, ema_view(state), batches(), mesh)
    results.update({f"ema_{k}": v for k, v in ema.items() if k != "eval_examples"})
  return results


# --------------------------------------------------------------------------- the run

# What a run stops with when its config, data or checkpoints are wrong: main.py prints
# these without a traceback.
RUN_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)
_LISTED_SKIPS = 100  # undecodable images named in eval_<split>.json (all are counted)
# A probe logged during training: `(model, config) -> fn(params, model_state, batch) ->
# {name: value}`, called before every `config.landscape_every_steps`-th step
# (`gcp.analysis.landscape.training_probe`).
Probe = Callable[[nn.Module, ml_collections.ConfigDict], Callable[[Any, dict, dict], dict]]


def _check_divisible(name: str, batch_size: int, accum_steps: int = 1) -> None:
  devices, hosts = jax.device_count(), jax.process_count()
  multiple = math.lcm(devices, hosts) * accum_steps
  if batch_size % multiple:
    micro = f" in {accum_steps} micro-batches" if accum_steps > 1 else ""
    raise ValueError(
        f"config.{name}={batch_size} is not divisible{micro} by the {devices} devices on "
        f"{hosts} host(s); use a multiple of {multiple}")


def _model_spec(config: ml_collections.ConfigDict, builder) -> dict:
  """The `create_model` arguments, with num_classes taken from (and checked against) the
  data set."""
  spec = config.model.to_dict()
  found = data.num_classes(builder, config.data.label_key)
  if spec["num_classes"] is None:
    spec["num_classes"] = found
  elif spec["num_classes"] != found:
    raise ValueError(
        f"config.model.num_classes={spec['num_classes']} but data set "
        f"{config.data.name!r} has {found} classes: set config.model.num_classes={found} "
        "(or leave it unset to take it from the data)")
  return spec


def _check_same_architecture(saved: dict, spec: dict, workdir: str) -> None:
  # Compute dtype may change between runs; everything else shapes the parameters.
  differ = {k: (saved.get(k), spec.get(k)) for k in set(saved) | set(spec)
            if k != "dtype" and saved.get(k) != spec.get(k)}
  if differ:
    lines = "\n".join(f"  model.{k}: checkpoint {a!r}, config {b!r}"
                      for k, (a, b) in sorted(differ.items()))
    raise ValueError(
        f"workdir {workdir} holds a checkpoint of another architecture:\n{lines}\n"
        "Use a new --workdir for this config, or set the config to match the checkpoint "
        "to resume it. Nothing was written.")


def initialise_from(state: TrainState, source: str, dont_load: str = "",
                    arch: str | None = None) -> TrainState:
  """`state` with its variables taken from the checkpoint at `source` (fine-tuning), except
  those whose path matches `dont_load`; the optimizer state stays fresh. Stops with a
  report if the checkpoint does not fit the model (`checkpoint.merge_pretrained`).

  A video model (`arch` in `VIDEO_ARCHS`) initialised from an image model's checkpoint
  takes its backbone only (`checkpoint.inflate_image_variables`: TSN's ImageNet
  initialisation, conv1 repeated for snippets).
  """
  fresh = {"params": state.params, **state.model_state}
  loaded = checkpoint.load_variables(source)
  if arch in VIDEO_ARCHS and checkpoint.load_model_spec(source)["arch"] not in VIDEO_ARCHS:
    merged, kept = checkpoint.inflate_image_variables(jax.device_get(loaded), fresh)
    reporting.info(f"Initialised the backbone from the image model at {source}; fresh: "
                   f"{', '.join(kept) or 'none'}")
  else:
    merged, kept = checkpoint.merge_pretrained(fresh, loaded, dont_load)
    reporting.info(f"Initialised {len(jax.tree.leaves(fresh)) - len(kept)} variables from "
                   f"{source}" + (f"; kept fresh: {', '.join(kept)}" if kept else ""))
  merged = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), merged, fresh)
  params = merged.pop("params")
  ema = state.ema_params
  if ema is not None:  # the EMA starts from the loaded parameters
    flat = _flat(params)
    ema = _nested({path: flat[path] for path in _flat(ema)})
  return state.replace(params=params, model_state=merged, ema_params=ema)


@dataclasses.dataclass
class _Data:
  """A run's data, checked: the data set, the resolved evaluation split, and the first
  evaluation batch (exactly as `eval_batches` yields it, to exercise the eval step)."""
  builder: Any
  eval_split: str
  eval_batch: dict
  image_shape: tuple[int, ...] | None = None  # one training input's, when training


def _prepare_data(config: ml_collections.ConfigDict, *, train: bool) -> _Data:
  """Opens the data set and runs its pipelines once: the splits exist, the keys name its
  features, each preprocessing yields a batch of a fixed shape (one paragraph naming the
  key and the fix otherwise), before anything is trained or written."""
  dc = config.data
  _check_divisible("eval_batch_size", config.eval_batch_size)
  if train:
    _check_divisible("batch_size", config.batch_size, config.optim.grad_accum_steps)
  builder = data.load_builder(dc.name, dc.data_dir)
  eval_split = dc.eval_split or data.default_eval_split(builder)
  keys = dict(image_key=dc.image_key, label_key=dc.label_key)
  data.check_split(builder, eval_split, "eval_split")
  eval_batch = data.first_batch(builder, split=eval_split, pp=dc.eval_pp, train=False,
                                per_host_batch=config.eval_batch_size // jax.process_count(),
                                **keys)
  if not train:
    return _Data(builder, eval_split, eval_batch)
  per_host = config.batch_size // jax.process_count()
  examples = data.check_split(builder, dc.train_split, "train_split")
  if data.steps_per_epoch(builder, dc.train_split, per_host) == 0:
    raise ValueError(f"config.batch_size={config.batch_size} exceeds the {examples} examples "
                     f"of {dc.name}:{dc.train_split}: lower it")
  first = data.first_batch(builder, split=dc.train_split, pp=dc.train_pp, train=True,
                           per_host_batch=per_host, **keys)
  return _Data(builder, eval_split, eval_batch, first["image"].shape[1:])


def _eval_batches(config: ml_collections.ConfigDict, dataset: _Data, skipped: list):
  """`() -> batches` of the evaluation split (its pipeline built once); each pass lists
  the images it skipped in `skipped` (emptied first)."""
  dc = config.data
  passes = data.eval_passes(dataset.builder, split=dataset.eval_split, pp=dc.eval_pp,
                            image_key=dc.image_key, label_key=dc.label_key,
                            per_host_batch=config.eval_batch_size // jax.process_count(),
                            prefetch=dc.prefetch)

  def batches():
    skipped.clear()
    return passes(skipped)
  return batches


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Scores a checkpoint on the evaluation split (`config.data.eval_split`, or the data
  set's own): every image, top-1 and top-5.

  The checkpoint is `config.init_from` if set (e.g. a converted release model, or one
  step's folder such as `WORKDIR/checkpoints/248`), else the latest in `workdir`; the
  network is the one saved with it. A checkpoint with an EMA (`optim.ema_decay`) is scored
  with both parameter sets (`ema_eval_*`). The result (with the checkpoint, split and the
  images that could not be decoded) is returned and written to `workdir/eval_<split>.json`.
  """
  config_lib.validate(config)
  source = config.init_from or workdir
  return _score(config, workdir, source, checkpoint.load_model_spec(source),
                checkpoint.load_state(source))


def _score(config: ml_collections.ConfigDict, workdir: str, source: str, spec: dict,
           saved: dict, dataset: _Data | None = None) -> dict:
  """`evaluate_checkpoint` of the checkpoint at `source`, already read (`spec`, `saved`),
  on `dataset` (default: prepared here)."""
  dataset = dataset or _prepare_data(config, train=False)
  found = data.num_classes(dataset.builder, config.data.label_key)
  if spec["num_classes"] != found:
    raise ValueError(f"the checkpoint at {source} classifies {spec['num_classes']} classes "
                     f"but {config.data.name!r} has {found}")
  mesh = make_mesh()
  variables, ema = jax.device_put(({"params": saved["params"], **saved["model_state"]},
                                   saved.get("ema_params")), NamedSharding(mesh, P()))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables.pop("params"),
                     model_state=variables, opt_state=None, ema_params=ema)
  eval_step = make_eval_step(create_model(**spec), config.eval_flip)
  total = data.num_eval_batches(dataset.builder, dataset.eval_split,
                                config.eval_batch_size // jax.process_count())
  bar = reporting.progress_bar(total * (1 if ema is None else 2), 0,
                               desc=f"eval {spec['arch']}+{spec['head']}")
  skipped = []
  batches = _eval_batches(config, dataset, skipped)
  results = evaluate_with_ema(eval_step, state, lambda: _counted(batches(), bar), mesh)
  bar.close()
  _report_skipped(config, f"eval ({dataset.eval_split})", skipped)
  named = ":" in source and not os.path.exists(source)  # e.g. pretrained:NAME
  results = {"checkpoint": source if named else os.path.abspath(source),
             "step": int(saved["step"]),
             "split": dataset.eval_split, "flip": config.eval_flip, **results,
             "skipped_images": len(skipped), "skipped": skipped[:_LISTED_SKIPS]}
  if jax.process_index() == 0:
    name = re.sub(r"[^\w.-]+", "_", dataset.eval_split).strip("_")
    workdir_lib.write_atomic(os.path.join(workdir, f"eval_{name}.json"),
                             json.dumps(results, indent=2))
  return results


def _report_skipped(config: ml_collections.ConfigDict, what: str, names: list[str]) -> None:
  if names:
    unit = "video" if config.data.name.startswith(data.FRAMES_PREFIX) else "image"
    reporting.warn(data.describe_skipped(what, names, unit=unit))


def _counted(iterable, bar):
  for item in iterable:
    yield item
    bar.update()


class Interrupted(KeyboardInterrupt):
  """Training stopped by SIGINT (Ctrl-C) or SIGTERM (preemption) after saving a checkpoint."""

  def __init__(self, signum: int, step: int, workdir: str):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; saved a "
                     f"checkpoint in {workdir}: run the same command again to resume")
    self.signum, self.step = signum, step


class _StopSignals:
  """Turns SIGINT and SIGTERM into a request that the loop honours between steps, so that
  it can save a checkpoint first. On several hosts the request is agreed at log steps (a
  checkpoint save needs every host)."""

  def __enter__(self):
    self.signum, self._previous = None, {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._record)
    return self

  def _record(self, signum, frame):
    del frame
    self.signum = signum

  def requested(self, at_log_step: bool) -> bool:
    if jax.process_count() == 1:
      return self.signum is not None
    if not at_log_step:
      return False
    from jax.experimental import multihost_utils
    signums = multihost_utils.process_allgather(np.int32(self.signum or 0))
    self.signum = int(signums.max()) or None
    return self.signum is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _Meter:
  """What a run accumulates outside its state: this epoch's and this log window's train
  metrics (running sums over the applied steps, in step order), updates skipped for a
  non-finite loss, the training images that could not be decoded this epoch, and the
  running time. `as_dict()` is saved with every checkpoint, so that a resumed run reports
  exactly what an uninterrupted one does.

  Steps' metrics stay on the device until `fold`, which also acts on non-finite steps
  (`nan_policy`: 'stop' raises, 'skip' counts; the step itself left the state unchanged).
  `unreported` holds an ended epoch's train metrics (and skipped images) until its
  evaluation is logged.
  """

  def __init__(self, nan_policy: str, saved: dict | None, session_start: float):
    saved = saved or {}
    self.nan_policy = nan_policy
    self.epoch = saved.get("epoch", {"loss": 0.0, "top1": 0.0, "steps": 0})
    self.window = saved.get("window", {"loss": 0.0, "steps": 0})
    self.skipped_updates = saved.get("skipped_updates", 0)
    self.skipped_images = saved.get("skipped_images", [])
    self.unreported = saved.get("unreported")
    self.started = saved.get("started", session_start)
    self._time_before, self._session_start = saved.get("wall_time", 0.0), session_start
    self._pending = []

  def wall_time(self) -> float:
    """Seconds the run has been running, over all its sessions."""
    return self._time_before + time.time() - self._session_start

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))

  def fold(self, last_checkpoint: int | None) -> None:
    """Adds the pending steps' metrics to the sums (every step is checked here before a
    checkpoint or a log line can include it)."""
    pending, self._pending = self._pending, []
    bad = []
    for (step, _), m in zip(pending, jax.device_get([m for _, m in pending])):
      if not m["finite"]:
        bad.append(step)
        continue
      for sums in (self.epoch, self.window):
        sums["loss"] += float(m["loss"])
        sums["steps"] += 1
      self.epoch["top1"] += float(m["top1"])
    if not bad:
      return
    if self.nan_policy == "stop":
      raise FloatingPointError(
          f"non-finite loss or gradient at step {bad[0]}: training stopped without applying "
          f"it; the last checkpoint (step {last_checkpoint}) is intact. Lower the learning "
          "rate, or set config.nan_policy='skip' to skip such updates")
    self.skipped_updates += len(bad)
    reporting.info(f"skipped {len(bad)} update(s) with a non-finite loss or gradient at "
                   f"step(s) {bad[:10]} (config.nan_policy='skip')")

  def take_window(self) -> float:
    """The mean train loss since the last log step (NaN if no step was applied)."""
    loss = self.window["loss"] / self.window["steps"] if self.window["steps"] else math.nan
    self.window = {"loss": 0.0, "steps": 0}
    return loss

  def end_epoch(self) -> dict:
    """`{"metrics": the ended epoch's train metrics, "skipped": its undecodable images}`,
    kept as `unreported` until logged; starts the next epoch's sums."""
    n = self.epoch["steps"]
    metrics = {"train_loss": self.epoch["loss"] / n if n else math.nan,
               "train_top1": self.epoch["top1"] / n if n else math.nan,
               "train_skipped_images": len(self.skipped_images)}
    if self.skipped_updates:
      metrics["skipped_steps"] = self.skipped_updates
    self.unreported = {"metrics": metrics, "skipped": list(self.skipped_images)}
    self.epoch = {"loss": 0.0, "top1": 0.0, "steps": 0}
    self.skipped_images.clear()  # the pipeline appends to this list
    return self.unreported

  def as_dict(self) -> dict:
    return {"epoch": dict(self.epoch), "window": dict(self.window),
            "skipped_updates": self.skipped_updates,
            "skipped_images": list(self.skipped_images), "unreported": self.unreported,
            "started": self.started, "wall_time": self.wall_time()}


def _epoch_logged(workdir: str, step: int) -> bool:
  """Whether the run's metrics.jsonl holds the line of an epoch that ended at `step`, as
  process 0 (the one that writes it) reads it: every host decides alike."""
  path = os.path.join(workdir, reporting.METRICS_FILE)
  logged = jax.process_index() == 0 and os.path.exists(path) and any(
      r["step"] == step and "eval_top1" in r for r in reporting.read_metrics(path))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    logged = bool(multihost_utils.broadcast_one_to_all(np.int32(logged)))
  return logged


@dataclasses.dataclass(frozen=True)
class _Programs:
  """What a run compiles, for a config's model, optimizer and data shapes."""
  model: nn.Module
  schedule: optax.Schedule
  init: Callable[[], TrainState]
  train_step: Callable
  eval_step: Callable


# This process's latest runs' programs, least recently used first (a few: each holds its
# compiled executables).
_PROGRAMS: dict[tuple, _Programs] = {}
_KEPT_PROGRAMS = 4


def _programs(config: ml_collections.ConfigDict, spec: dict, steps_per_epoch: int,
              image_shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> _Programs:
  """The run's jitted functions; a later run of this process with the same settings (a
  resume, a re-run cell in a notebook) gets the same ones, so nothing is traced again."""
  dc, optim = config.data, config.optim
  mixing = (dict(mixup_alpha=dc.mixup_alpha, cutmix_alpha=dc.cutmix_alpha,
                 switch_prob=dc.mix_switch_prob)
            if dc.mixup_alpha > 0 or dc.cutmix_alpha > 0 else None)
  settings = dict(optim=optim.to_dict(), steps_per_epoch=steps_per_epoch,
                  num_epochs=config.num_epochs, batch_size=config.batch_size,
                  image_shape=image_shape, seed=config.seed, mixing=mixing,
                  trainable=config.trainable_params, eval_flip=config.eval_flip,
                  compiler_options=runtime.compiler_options())
  # The module itself, not its spec: a class redefined in a notebook makes another model.
  model = create_model(**spec)
  key = (json.dumps(settings, sort_keys=True, default=str), model, mesh)
  programs = _PROGRAMS.pop(key, None)
  if programs is None:
    schedule = learning_rate_schedule(optim, steps_per_epoch, config.num_epochs,
                                      config.batch_size)
    tx = create_optimizer(optim, schedule)
    programs = _Programs(
        model, schedule,
        init=_make_init(model, tx, image_shape, config.seed, mesh,
                        trainable=config.trainable_params, ema=optim.ema_decay > 0),
        train_step=make_train_step(
            model, tx, optim.label_smoothing, config.seed, optim.grad_accum_steps,
            trainable=config.trainable_params, ema_decay=optim.ema_decay, mixing=mixing,
            aux_loss_weight=optim.aux_loss_weight),
        eval_step=make_eval_step(model, config.eval_flip))
  _PROGRAMS[key] = programs  # the most recently used last
  while len(_PROGRAMS) > _KEPT_PROGRAMS:
    del _PROGRAMS[next(iter(_PROGRAMS))]
  return programs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False, probe: Probe | None = None) -> dict:
  """Trains `config`'s model, evaluating every epoch; resumes from `workdir` if it holds a
  checkpoint. Returns the final metrics (eval_top1, eval_top5, eval_loss, train_loss, ...).

  Before the first step everything the run needs is checked and run once (the splits,
  both preprocessings, the keys, the batch sizes, `init_from`, the evaluation step), so a
  problem stops it in its first minute. A resumed run continues the one in `workdir`: a
  config that would change its trajectory stops it (`workdir.ConfigChanged`) unless
  `allow_config_change`; a damaged newest checkpoint is reported and the newest one that
  restores is used. A finished run is evaluated, not trained.

  Args:
    config: the run's config (`gcp.config.base_config()` keys).
    workdir: where checkpoints, logs and plots go.
    allow_config_change: accept trajectory changes on resume (recorded in the workdir).
    probe: what `config.landscape_every_steps` logs (`gcp.analysis.landscape.
      training_probe`; main.py passes it).
  """
  session_start = time.time()
  config_lib.validate(config)
  workdir = os.path.abspath(workdir)
  if config.nan_policy not in ("stop", "skip"):
    raise ValueError(f"unknown config.nan_policy {config.nan_policy!r}; valid: stop, skip")
  if config.landscape_every_steps and probe is None:
    raise ValueError("config.landscape_every_steps needs the landscape probe: pass "
                     "probe=gcp.analysis.landscape.training_probe (main.py does)")
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  on_disk = checkpoint.steps(checkpoint_dir)
  changes = workdir_lib.reconcile(workdir, config, step=max(on_disk),
                                  allow_changes=allow_config_change) if on_disk else None
  dataset = _prepare_data(config, train=True)
  dc = config.data
  spec = _model_spec(config, dataset.builder)
  per_host_batch = config.batch_size // jax.process_count()
  steps_per_epoch = data.steps_per_epoch(dataset.builder, dc.train_split, per_host_batch)
  total_steps = steps_per_epoch * config.num_epochs
  if on_disk:  # (a damaged newest checkpoint is checked, or skipped, when restoring)
    with contextlib.suppress(checkpoint.CheckpointError):
      _check_same_architecture(checkpoint.load_model_spec(checkpoint_dir), spec, workdir)
  if on_disk and max(on_disk) >= total_steps and _epoch_logged(workdir, max(on_disk)):
    last = os.path.join(checkpoint_dir, str(max(on_disk)))
    try:
      saved = checkpoint.load_model_spec(last), checkpoint.load_state(last)
    except checkpoint.CheckpointError:  # resumed below from the newest that restores
      saved = None
    if saved:
      workdir_lib.record(workdir, config, changes, max(on_disk))
      reporting.info(f"the run in {workdir} is finished (step {max(on_disk)} of "
                     f"{total_steps}): evaluating its last checkpoint")
      return _score(config, workdir, last, *saved, dataset=dataset)

  mesh = make_mesh()
  programs = _programs(config, spec, steps_per_epoch, dataset.image_shape, mesh)
  model, schedule, eval_step = programs.model, programs.schedule, programs.eval_step
  state = programs.init()
  ckpt = checkpoint.Checkpointer(
      checkpoint_dir, keep=config.keep_checkpoints,
      class_names=data.class_names(dataset.builder, config.data.label_key))
  start_step, progress = 0, None
  if on_disk:
    state, start_step, progress = ckpt.restore_newest(
        state, check_spec=lambda saved: _check_same_architecture(saved, spec, workdir),
        report=reporting.warn)
    if progress is None:
      reporting.warn(f"the checkpoint at step {start_step} was written by an earlier version "
                     "of gcp: this epoch's train metrics cover only the steps from now on")
  elif config.init_from:
    state = initialise_from(state, config.init_from, config.init_dont_load, spec["arch"])
  jax.block_until_ready(eval_step(state, shard_batch(dataset.eval_batch, mesh)))
  landscape = probe(model, config) if config.landscape_every_steps else None
  # Everything is checked: from here on the run writes.
  if on_disk:
    workdir_lib.record(workdir, config, changes, start_step)
    reporting.info(f"Resumed from step {start_step} in {workdir}")
  else:
    workdir_lib.start(workdir, config)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  n_train = sum(x.size for x in jax.tree.leaves(
      split_trainable(state.params, config.trainable_params)[0]))
  reporting.info(f"{spec['arch']} + {spec['head']} head: {n_params:,} parameters, "
                 f"{n_train:,} trained; {steps_per_epoch} steps/epoch x "
                 f"{config.num_epochs} epochs on {jax.device_count()} device(s)")

  train_step = programs.train_step
  meter = _Meter(config.nan_policy, progress, session_start)
  eval_skipped = []
  eval_batches = _eval_batches(config, dataset, eval_skipped)
  log = reporting.MetricLog(workdir, resume_step=start_step, started=meter.started)
  train_kw = dict(split=dc.train_split, pp=dc.train_pp, image_key=dc.image_key,
                  label_key=dc.label_key, per_host_batch=per_host_batch, seed=config.seed,
                  shuffle_buffer=dc.shuffle_buffer, prefetch=dc.prefetch,
                  skipped=meter.skipped_images)

  eval_listed = False

  def report_epoch(epoch: int, step: int) -> dict:
    """Evaluates the epoch that ended at `step` (its checkpoint is already saved, so a
    failing evaluation loses nothing) and logs it with its train metrics."""
    nonlocal eval_listed
    _report_skipped(config, f"train epoch {epoch}/{config.num_epochs}",
                    meter.unreported["skipped"])
    final = {"epoch": epoch, **meter.unreported["metrics"]}
    final.update(evaluate_with_ema(eval_step, state, eval_batches, mesh))
    final["eval_skipped_images"] = len(eval_skipped)
    if not eval_listed:  # the same images every evaluation: list them once
      _report_skipped(config, f"eval ({dataset.eval_split})", eval_skipped)
      eval_listed = True
    ema = (f", EMA top-1 {100 * final['ema_eval_top1']:.2f}%"
           if "ema_eval_top1" in final else "")
    reporting.info(
        f"epoch {epoch}/{config.num_epochs}: train loss {final['train_loss']:.4f}, "
        f"eval top-1 {100 * final['eval_top1']:.2f}%, top-5 "
        f"{100 * final['eval_top5']:.2f}%{ema} ({final['eval_examples']} images)")
    log.write(step, meter.wall_time(), final)
    ckpt.record_eval(step, final)
    meter.unreported = None
    return final

  bar = reporting.progress_bar(total_steps, start_step, desc=f"{spec['arch']}+{spec['head']}")
  final, step = {}, start_step
  try:
    with _StopSignals() as stop:
      if start_step % steps_per_epoch == 0 and progress is not None:
        if _epoch_logged(workdir, start_step):
          meter.unreported = None
        elif start_step:  # stopped between an epoch's end and its line: report it now
          if meter.unreported is None:
            meter.end_epoch()
          final = report_epoch(start_step // steps_per_epoch, start_step)
      for epoch in range(start_step // steps_per_epoch, config.num_epochs):
        tick, tick_step = time.time(), step
        for batch in data.train_batches(dataset.builder, epoch=epoch,
                                        start_step=step - epoch * steps_per_epoch,
                                        **train_kw):
          batch = shard_batch(batch, mesh)
          if landscape and step % config.landscape_every_steps == 0:
            # Before the step, which donates the state.
            log.write(step, meter.wall_time(),
                      landscape(state.params, state.model_state, batch))
          state, metrics = train_step(state, batch)
          step += 1
          meter.add(step, metrics)
          bar.update()
          at_log_step = step % config.log_every_steps == 0
          if at_log_step:
            meter.fold(ckpt.latest_step())
            rate = (step - tick_step) * config.batch_size / (time.time() - tick)
            tick, tick_step = time.time(), step
            loss = meter.take_window()
            bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:.0f}")
            log.write(step, meter.wall_time(), {"loss": loss,
                                                "learning_rate": schedule(step - 1),
                                                "images_per_second": rate})
          if stop.requested(at_log_step):
            meter.fold(ckpt.latest_step())
            if ckpt.latest_step() != step:
              ckpt.save(step, state, spec, meter.as_dict())
            ckpt.wait()
            raise Interrupted(stop.signum, step, workdir)
          if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 \
              and step % steps_per_epoch:
            meter.fold(ckpt.latest_step())
            ckpt.save(step, state, spec, meter.as_dict())
        meter.fold(ckpt.latest_step())
        meter.end_epoch()
        ckpt.save(step, state, spec, meter.as_dict())
        final = report_epoch(epoch + 1, step)
  finally:
    bar.close()
    ckpt.wait()
    ckpt.close()
    log.close()
  if jax.process_index() == 0 and os.path.exists(log.path):
    reporting.plot_curves(log.path, os.path.join(workdir, "curves.png"),
                          title=f"{spec['arch']} + {spec['head']} on {dc.name}")
  return {"step": step, **final}


