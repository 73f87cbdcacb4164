"""A run's config record: written once, resumed from, changes refused or recorded."""
import json
import os

import pytest

from gcp import config as config_lib
from gcp import workdir


def config(**values):
  c = config_lib.base_config()
  for key, value in values.items():
    config_lib.set_value(c, key, value)
  return c


def test_saved_config_round_trips_every_type(tmp_path):
  original = config(**{"optim.decay_epochs": (5, 7), "model.num_classes": 10,
                       "data.data_dir": "/data", "landscape_etas": (-1.0, 1.0)})
  workdir.start(str(tmp_path), original)
  loaded = workdir.saved_config(str(tmp_path))
  assert loaded.optim.decay_epochs == (5, 7) and loaded.model.num_classes == 10
  assert config_lib.changes(original, loaded) == ({}, {})
  assert loaded.to_json_best_effort() == original.to_json_best_effort()


def test_unknown_keys_in_a_saved_config_are_named(tmp_path):
  values = config_lib.to_dict(config())
  values["optim"]["lookahead"] = 5
  (tmp_path / "config.json").write_text(json.dumps(values))
  with pytest.raises(ValueError, match=r"config.json has keys this version of gcp does not "
                                       r"know: optim.lookahead"):
    workdir.saved_config(str(tmp_path))


def test_trajectory_changes_are_refused_and_free_ones_recorded(tmp_path):
  run = str(tmp_path)
  workdir.start(run, config())
  before = (tmp_path / "config.json").read_text()

  changed = config(**{"optim.learning_rate": 0.2, "log_every_steps": 7})
  with pytest.raises(workdir.ConfigChanged) as error:
    workdir.reconcile(run, changed, step=80)
  message = str(error.value)
  assert "  optim.learning_rate: run 0.1, now 0.2\n" in message
  assert "log_every_steps" not in message  # free: not a reason to stop
  assert "--allow_config_change" in message and "Nothing was written." in message
  assert not (tmp_path / "config_history.jsonl").exists()

  # Accepted with the override: recorded, config.json untouched, the run's config follows.
  accepted = workdir.reconcile(run, changed, step=80, allow_changes=True)
  workdir.record(run, changed, accepted, step=80)
  assert (tmp_path / "config.json").read_text() == before
  entry = json.loads((tmp_path / "config_history.jsonl").read_text())
  assert entry["step"] == 80 and entry["trajectory"] is True
  assert entry["changes"] == {"optim.learning_rate": [0.1, 0.2], "log_every_steps": [100, 7]}
  assert config_lib.changes(workdir.saved_config(run), changed) == ({}, {})

  # A free change alone needs no override, and is recorded too.
  quieter = config(**{"optim.learning_rate": 0.2, "log_every_steps": 50, "eval_flip": True})
  workdir.record(run, quieter, workdir.reconcile(run, quieter, step=90), step=90)
  lines = (tmp_path / "config_history.jsonl").read_text().splitlines()
  assert len(lines) == 2 and json.loads(lines[1])["trajectory"] is False
  assert workdir.saved_config(run).log_every_steps == 50


@pytest.mark.parametrize("schedule, free", [("step", True), ("cosine", False)])
def test_more_epochs_continue_a_schedule_that_does_not_depend_on_them(schedule, free):
  old = config(**{"optim.schedule": schedule, "num_epochs": 10})
  trajectory, free_changes = config_lib.changes(old, config(**{"optim.schedule": schedule,
                                                               "num_epochs": 20}))
  assert bool(free_changes) == free and bool(trajectory) != free


def test_resolve_starts_from_the_workdir_with_overrides_on_top(tmp_path):
  run = str(tmp_path)
  workdir.start(run, config(**{"model.arch": "resnet18", "num_epochs": 3}))
  default_file = config(**{"model.arch": "resnet50", "eval_flip": True})
  # No --config: the run's own, with the command line's overrides.
  resolved = workdir.resolve(run, default_file, file_given=False, overrides=["eval_flip"])
  assert (resolved.model.arch, resolved.num_epochs, resolved.eval_flip) == ("resnet18", 3,
                                                                            True)
  # --config given: that file, which reconcile then compares with the run.
  assert workdir.resolve(run, default_file, file_given=True,
                         overrides=[]).model.arch == "resnet50"
  # An empty workdir: the file.
  assert workdir.resolve(str(tmp_path / "new"), default_file, file_given=False,
                         overrides=[]).model.arch == "resnet50"


def test_a_corrupt_config_json_names_the_fix(tmp_path):
  (tmp_path / "config.json").write_text('{"seed": ')
  with pytest.raises(ValueError, match=r"config.json is not valid JSON .*new --workdir"):
    workdir.saved_config(str(tmp_path))


def test_write_atomic_leaves_no_partial_file(tmp_path, monkeypatch):
  path = str(tmp_path / "f.json")
  workdir.write_atomic(path, "old")
  with open(tmp_path / "plain", "w"):
    pass
  assert os.stat(path).st_mode == os.stat(tmp_path / "plain").st_mode  # not private
  os.remove(tmp_path / "plain")

  class Boom(Exception):
    pass

  def failing_replace(*args):
    raise Boom
  monkeypatch.setattr(os, "replace", failing_replace)
  with pytest.raises(Boom):
    workdir.write_atomic(path, "new")
  assert open(path).read() == "old" and os.listdir(tmp_path) == ["f.json"]
