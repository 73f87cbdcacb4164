"""Config schema validation and command-line overrides."""
import importlib.util
import os

import pytest

from gcp import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_file(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_shipped_configs_are_valid():
  for name in sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                     if f.endswith(".py")):
    config_lib.validate(load_config_file(name))


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
