"""The training loop's transformer-recipe components (SPEC §4): AdamW, warmup + cosine to a
minimum with cooldown, trainable-parameter selection, EMA, mixed targets, auxiliary losses,
and a ViT with Moment Probing+ trained and evaluated end to end."""
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gcp import checkpoint, reporting, train
from gcp.analysis.landscape import training_probe
from gcp.config import base_config
from gcp.models import create_model


def test_adamw_matches_torch_with_the_decay_mask():
  """Three AdamW steps against torch.optim.AdamW, decaying kernels only (biases, the class
  token and the position embedding in a no-decay group, as timm's DeiT / MP). Tolerance
  1e-6 absolute: float32 rounding of O(1) parameters moved by three steps of 1e-2, which
  the two libraries compute in different orders."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=2)},
            "cls": rng.normal(size=(1, 1, 2)),
            "posembed_input": {"pos_embedding": rng.normal(size=(1, 3, 2))}}
  params = jax.tree.map(lambda x: x.astype(np.float32), params)
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
           for _ in range(3)]
  c = base_config().optim
  c.optimizer, c.learning_rate, c.weight_decay = "adamw", 0.01, 0.05
  tx = train.create_optimizer(c, optax.constant_schedule(c.learning_rate))
  ours, opt_state = params, tx.init(params)
  for g in grads:
    updates, opt_state = tx.update(g, opt_state, ours)
    ours = optax.apply_updates(ours, updates)

  flat = flax.traverse_util.flatten_dict(params, sep="/")
  tensors = {k: torch.tensor(v, requires_grad=True) for k, v in flat.items()}
  decayed = ["dense/kernel"]
  opt = torch.optim.AdamW(
      [{"params": [tensors[k] for k in decayed], "weight_decay": 0.05},
       {"params": [t for k, t in tensors.items() if k not in decayed], "weight_decay": 0.0}],
      lr=0.01, betas=(0.9, 0.999), eps=1e-8)
  for g in grads:
    for k, v in flax.traverse_util.flatten_dict(g, sep="/").items():
      tensors[k].grad = torch.tensor(v)
    opt.step()
  for k, v in flax.traverse_util.flatten_dict(ours, sep="/").items():
    np.testing.assert_allclose(v, tensors[k].detach().numpy(), rtol=0, atol=1e-6, err_msg=k)
    assert not np.allclose(v, flat[k], atol=1e-3), k  # every parameter moved


def test_gradient_clipping_scales_to_the_global_norm():
  """As torch.nn.utils.clip_grad_norm_: g * min(1, max_norm / ||g||) over all parameters."""
  c = base_config().optim
  c.learning_rate, c.momentum, c.weight_decay, c.grad_clip_norm = 1.0, 0.0, 0.0, 2.0
  tx = train.create_optimizer(c, optax.constant_schedule(1.0))
  params = {"a": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
  for scale in (0.1, 1.0, 3.0):  # gradient norm 2 * scale: below, at and above 2
    grads = {"a": jnp.full((2, 2), scale), "b": jnp.zeros(3)}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["a"], -scale * min(1.0, 2.0 / (2 * scale)), rtol=1e-6)


def test_warmup_cosine_to_minimum_with_cooldown():
  c = base_config().optim
  c.schedule, c.learning_rate, c.min_learning_rate = "cosine", 0.1, 1e-4
  c.warmup_epochs, c.warmup_init_lr, c.cooldown_epochs = 2, 1e-3, 2
  lr = train.learning_rate_schedule(c, steps_per_epoch=10, num_epochs=14)
  # Warmup over steps 0-20 from 1e-3; cosine over the 100 steps 20-120; then the minimum.
  cosine = lambda t: 1e-4 + (0.1 - 1e-4) * 0.5 * (1 + np.cos(np.pi * t / 100))  # noqa
  steps = (0, 10, 20, 45, 70, 119, 120, 139)
  want = [1e-3, (1e-3 + 0.1) / 2, 0.1, cosine(25), cosine(50), cosine(99), 1e-4, 1e-4]
  assert [float(lr(s)) for s in steps] == pytest.approx(want, rel=1e-4)  # float32 cosine


def test_split_trainable_by_regex():
  params = {"head": {"fc": {"kernel": 1}}, "Transformer": {
      "encoderblock_0": {"psrp": {"down": {"kernel": 2}}, "MlpBlock_3": {"kernel": 3}}}}
  trainable, frozen = train.split_trainable(params, "^head/|/psrp/")
  assert trainable == {"head": {"fc": {"kernel": 1}},
                       "Transformer": {"encoderblock_0": {"psrp": {"down": {"kernel": 2}}}}}
  assert frozen == {"Transformer": {"encoderblock_0": {"MlpBlock_3": {"kernel": 3}}}}
  assert train.with_params(frozen, trainable) == params
  assert train.split_trainable(params, "") == (params, {})
  with pytest.raises(ValueError, match=r"matches no parameter; paths look like head/fc/k"):
    train.split_trainable(params, "^backbone/")
  with pytest.raises(ValueError, match="is not a regular expression"):
    train.split_trainable(params, "head/(")


class TwoLayers(nn.Module):
  """A frozen "backbone" layer and a trained "head" layer; the head also sows auxiliary
  logits (as AMS-Net's training-only head) when `aux` is set."""
  aux: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.tanh(nn.Dense(6, name="backbone")(x.reshape(x.shape[0], -1)))
    if self.aux and (train or self.is_initializing()):  # its parameters always exist
      aux = nn.Dense(5, name="aux_head")(h)
      if train:
        self.sow("aux_logits", "aux", aux)
    return nn.Dense(5, name="head")(h)


def batch(seed=0, size=8):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(size, 2, 2, 1)).astype(np.float32),
          "label": rng.integers(0, 5, size).astype(np.int32)}


def test_frozen_parameters_get_no_state_and_the_ema_follows_the_trained_ones():
  model, tx, mesh = TwoLayers(), optax.adam(0.1), train.make_mesh(jax.devices()[:1])
  state = train.init_state(model, tx, (2, 2, 1), 0, mesh, trainable="^head/", ema=True)
  adam = state.opt_state[0]
  assert set(flax.traverse_util.flatten_dict(adam.mu, sep="/")) == {"head/kernel",
                                                                      "head/bias"}
  step = train.make_train_step(model, tx, 0.0, trainable="^head/", ema_decay=0.9)
  history = [jax.device_get(state.params)]
  ema = jax.device_get(state.params["head"])
  for seed in range(3):
    state, metrics = step(state, train.shard_batch(batch(seed), mesh))
    assert bool(metrics["finite"])
    history.append(jax.device_get(state.params))
    ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, ema, history[-1]["head"])
  jax.tree.map(np.testing.assert_array_equal, history[-1]["backbone"],
               history[0]["backbone"])
  assert not np.array_equal(history[-1]["head"]["kernel"], history[0]["head"]["kernel"])
  assert set(jax.device_get(state.ema_params)) == {"head"}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               jax.device_get(state.ema_params["head"]), ema)
  viewed = jax.device_get(train.ema_view(state).params)
  jax.tree.map(np.testing.assert_array_equal, viewed["head"],
               jax.device_get(state.ema_params["head"]))
  jax.tree.map(np.testing.assert_array_equal, viewed["backbone"], history[0]["backbone"])


def test_mixed_targets_mix_the_losses():
  """Cross-entropy is linear in the targets: a mixing matrix row lam * e_i + (1-lam) e_j
  gives lam * CE(label_i) + (1 - lam) * CE(label_j), smoothing included (exact, 1e-6)."""
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
  labels = jnp.array([0, 3, 1])
  mix = jnp.array([[0.7, 0.0, 0.3], [0.0, 0.4, 0.6], [0.2, 0.8, 0.0]])
  ce = lambda l: train.cross_entropy(logits, jnp.full(3, l), 0.1)  # noqa: E731
  want = [0.7 * ce(0)[0] + 0.3 * ce(1)[0], 0.4 * ce(3)[1] + 0.6 * ce(1)[1],
          0.2 * ce(0)[2] + 0.8 * ce(3)[2]]
  np.testing.assert_allclose(train.cross_entropy(logits, labels, 0.1, mix), want, rtol=1e-6)


def test_auxiliary_logits_add_their_weighted_loss():
  model, tx, mesh = TwoLayers(aux=True), optax.sgd(0.0), train.make_mesh(jax.devices()[:1])
  state = train.init_state(model, tx, (2, 2, 1), 0, mesh)
  data = batch()
  variables = {"params": jax.device_get(state.params)}
  logits, sown = model.apply(variables, data["image"], train=True, mutable=["aux_logits"])
  want = (train.cross_entropy(logits, data["label"], 0.1).mean() + 0.5 * train.cross_entropy(
      sown["aux_logits"]["aux"][0], data["label"], 0.1).mean())
  _, metrics = train.make_train_step(model, tx, 0.1, aux_loss_weight=0.5)(
      state, train.shard_batch(data, mesh))
  assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-6)
  # Evaluation runs without the auxiliary head.
  assert model.apply(variables, data["image"]).shape == (8, 5)


def test_moment_probing_plus_run_trains_only_the_head_and_psrp(data_dir, tmp_path):
  """A ViT (no BatchNorm) through train_and_evaluate with the MP+ recipe: AdamW, warmup +
  cosine, random erasing, mixup / cutmix, drop-path, EMA. Frozen
  parameters come out bit-identical to their initialisation, the optimizer state and the
  EMA cover exactly the trained ones, and the EMA is evaluated in training and again from
  the checkpoint."""
  c = base_config()
  c.data.data_dir = data_dir
  c.data.train_split, c.data.eval_split = "train[:64]", "test[:24]"
  # RandAugment runs in tests/data/test_randaugment.py (here it would add ~15 s of tracing).
  c.data.train_pp = "rgb|resize(32)|flip_lr|normalize('inception')|random_erase(0.25)"
  c.data.eval_pp = "rgb|resize(32)|normalize('inception')"
  c.data.mixup_alpha, c.data.cutmix_alpha = 0.8, 1.0
  c.model.arch, c.model.head, c.model.drop_path = "vit_test", "mp_plus", 0.1
  c.model.proj_dim = 32
  c.trainable_params = "^head/|/psrp/"
  o = c.optim
  o.optimizer, o.learning_rate, o.weight_decay = "adamw", 1e-3, 0.05
  o.schedule, o.warmup_epochs, o.warmup_init_lr, o.min_learning_rate = "cosine", 1, 1e-6, 1e-6
  o.ema_decay = 0.5
  c.batch_size, c.eval_batch_size, c.num_epochs, c.log_every_steps = 16, 16, 1, 2
  c.landscape_every_steps, c.landscape_etas = 2, (-1.0, 0.0, 1.0)
  workdir = str(tmp_path / "mp_plus")
  result = train.train_and_evaluate(c, workdir, probe=training_probe)
  assert np.isfinite(result["train_loss"]) and 0 <= result["ema_eval_top1"] <= 1
  # The landscape along the gradient was logged before steps 0 and 2 (gcp.analysis).
  logged = [m for m in reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))
            if "landscape_grad_norm" in m]
  assert [m["step"] for m in logged] == [0, 2]
  assert all(m["landscape_grad_norm"] > 0 and m["landscape_loss_range"] >= 0 for m in logged)

  saved = checkpoint.load_state(workdir)
  model = create_model(**checkpoint.load_model_spec(workdir))
  tx = train.create_optimizer(o, optax.constant_schedule(0.0))
  fresh = jax.device_get(train.init_state(model, tx, (32, 32, 3), c.seed, train.make_mesh(),
                                          trainable=c.trainable_params, ema=True).params)
  trained, frozen = train.split_trainable(saved["params"], c.trainable_params)
  flat_fresh = flax.traverse_util.flatten_dict(fresh, sep="/")
  for path, value in flax.traverse_util.flatten_dict(frozen, sep="/").items():
    np.testing.assert_array_equal(value, flat_fresh[path], err_msg=path)
  trained_paths = set(flax.traverse_util.flatten_dict(trained, sep="/"))
  assert any("/psrp/" in p for p in trained_paths)
  assert all(not np.array_equal(v, flat_fresh[p]) for p, v in
             flax.traverse_util.flatten_dict(trained, sep="/").items()
             if p.endswith("kernel"))
  # Every per-parameter optimizer buffer (Adam's mu and nu) is over the trained paths only.
  is_buffer = lambda n: isinstance(n, dict) and "head" in n  # noqa: E731
  buffers = [set(flax.traverse_util.flatten_dict(node, sep="/"))
             for node in jax.tree.leaves(saved["opt_state"], is_leaf=is_buffer)
             if is_buffer(node)]
  assert len(buffers) == 2 and all(b == trained_paths for b in buffers)  # mu and nu
  assert set(flax.traverse_util.flatten_dict(saved["ema_params"], sep="/")) == trained_paths

  rescored = train.evaluate_checkpoint(c, workdir)
  assert rescored["ema_eval_top1"] == pytest.approx(result["ema_eval_top1"])
  assert rescored["eval_top1"] == pytest.approx(result["eval_top1"])


class ClipModel(nn.Module):
  """A clip classifier `[B, T, H, W, C]` -> `[B, 5]`, as the video models (`input_rank`)."""
  input_rank = 5

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(5)(x.mean(axis=(1, 2, 3)))


def test_multi_view_clips_are_scored_by_their_mean_logits():
  """Video evaluation batches `[b, V, T, H, W, C]` (clips x crops) average the V views'
  logits; single-view clips `[b, T, H, W, C]` are scored as they are."""
  model, mesh = ClipModel(), train.make_mesh(jax.devices()[:1])
  state = train.init_state(model, optax.sgd(0.1), (2, 4, 4, 3), 0, mesh)
  rng = np.random.default_rng(0)
  views = rng.normal(size=(3, 6, 2, 4, 4, 3)).astype(np.float32)
  labels = np.array([0, 4, 2], np.int32)
  variables = {"params": state.params}
  logits = np.mean([model.apply(variables, views[:, v]) for v in range(6)], axis=0)
  eval_step = train.make_eval_step(model)
  for images, want_logits in ((views, logits), (views[:, 0], model.apply(variables,
                                                                          views[:, 0]))):
    batch = {"image": images, "label": labels, "mask": np.ones(3, bool)}
    got = eval_step(state, train.shard_batch(batch, mesh))
    want = float(jnp.sum(train.cross_entropy(jnp.asarray(want_logits), labels)))
    assert float(got["loss"]) == pytest.approx(want, rel=1e-5)
