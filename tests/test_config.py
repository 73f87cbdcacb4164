"""Config schema validation and command-line overrides."""
import importlib.util
import os
import re

import pytest

from gcp import config as config_lib
from gcp.data import preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


CONFIG_FILES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                      if f.endswith(".py"))


def check_preprocessing(data):
  """Every op of the preprocessing strings exists and takes its arguments (a video
  store's strings start with a frame-sampling op, gcp.data.video)."""
  for pp in (data.train_pp, data.eval_pp):
    if data.name.startswith("frames:"):
      sampling, _, pp = pp.partition("|")
      assert preprocess.parse_op(sampling)[0] in ("random_segments", "center_segments")
    preprocess.build(pp)


STUDIES = ("study",)  # get_config() is a study (gcp.analysis.study): a training config per head


@pytest.mark.parametrize("name", [n for n in CONFIG_FILES if n not in STUDIES])
def test_shipped_configs_are_valid(name):
  """Every setting a recipe's docstring lists (with its published number) builds a valid
  config; an unknown setting lists the valid ones."""
  module = load_config_module(name)
  config_lib.validate(module.get_config())
  settings = re.findall(r"^\| ([\w,]+) \| ([^|]+) \|$", module.__doc__, re.M)
  for setting, target in settings:
    if setting != "setting":
      config = module.get_config(setting)
      config_lib.validate(config)
      check_preprocessing(config.data)
      assert re.search(r"\d\d\.\d|none|no number", target), (setting, target)
  if settings:
    with pytest.raises(ValueError, match="unknown setting 'nope'; valid: "):
      module.get_config("nope")


@pytest.mark.parametrize("name", STUDIES)
@pytest.mark.parametrize("setting", [None, "imagenet"])
def test_study_configs_hold_a_valid_run_per_head(name, setting):
  from gcp.analysis import study as study_lib
  study = study_lib.resolve(load_config_module(name).get_config(setting))
  assert study.baseline in study.runs
  for head, run in study.runs.items():
    config_lib.validate(run)
    check_preprocessing(run.data)
    assert run.model.head == head and run.num_epochs == study.num_epochs


def test_recipes_follow_spec():
  r50 = load_config_module("imagenet").get_config("resnet50,dropcov")
  assert (r50.model.reduction_dim, r50.optim.learning_rate, r50.num_epochs) == (128, 0.12, 100)
  assert tuple(r50.optim.decay_epochs) == (30, 60, 90) and r50.optim.label_smoothing == 0.1
  mpn = load_config_module("fast_mpn_cov").get_config("resnet101")
  assert (mpn.batch_size, mpn.num_epochs, tuple(mpn.optim.decay_epochs)) == (160, 65,
                                                                             (30, 45, 60))
  fast = load_config_module("gcp_optimization").get_config("resnet18,LRfast")
  assert (fast.num_epochs, fast.optim.schedule, fast.optim.poly_epochs,
          fast.optim.poly_power) == (30, "poly", 52, 11)
  cub = load_config_module("finegrained").get_config("cub,resnet101")
  assert (cub.optim.classifier_lr_mult, cub.eval_flip, cub.batch_size) == (5.0, True, 10)


def test_vgg_fine_tuning_loads_everything_but_the_classifier():
  """finetune_mpncovvggd16.sh: mpncovvgg16_bn's features and reduction block, a new single
  Linear classifier (the ImageNet model's FC-4096 layers are not loaded)."""
  import jax
  import numpy as np

  from gcp import checkpoint
  from gcp.models import create_model
  cub = load_config_module("finegrained").get_config("aircraft,vgg16_bn")
  assert (cub.model.hidden, cub.model.reduction_dim, cub.optim.learning_rate,
          tuple(cub.optim.decay_epochs), cub.optim.classifier_lr_mult, cub.num_epochs) == (
              0, 256, 3e-3, (20,), 20.0, 40)
  variables = lambda **kw: jax.tree.map(lambda s: np.ones(s.shape, s.dtype), jax.eval_shape(
      lambda: create_model("vgg16_bn", head="isqrt", reduction_dim=8, width=8, **kw).init(
          jax.random.key(0), np.zeros((1, 64, 64, 3)))))
  tuned, fresh = checkpoint.merge_pretrained(variables(num_classes=100, hidden=0),
                                             variables(num_classes=1000, hidden=32),
                                             cub.init_dont_load)
  assert sorted(fresh) == ["params/classifier/bias", "params/classifier/kernel"]


def test_unknown_keys_are_listed_with_suggestions():
  config = config_lib.base_config()
  config.model.hed = "gap"
  config.batchsize = 3
  with pytest.raises(ValueError) as e:
    config_lib.validate(config)
  message = str(e.value)
  assert "config.model.hed (did you mean config.model.head?)" in message
  assert "config.batchsize (did you mean config.batch_size?)" in message


def test_known_overrides_pass():
  config_lib.check_overrides(["main.py", "--config.model.head=gap", "--workdir=/tmp/x",
                              "--config.optim.decay_epochs=(10, 20)"])


@pytest.mark.parametrize("override, match", [
    ("--config.optim.lr=0.1", r"unknown config key --config.optim.lr\b.*valid keys"),
    ("--config.model.num_iter=3", r"unknown config key --config.model.num_iter \(did you "
                                  r"mean --config.model.num_iters\?\)"),
])
def test_unknown_override_is_named(override, match):
  with pytest.raises(SystemExit, match=match):
    config_lib.check_overrides(["main.py", override])
