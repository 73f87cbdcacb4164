"""The canonical PyTorch name map for every backbone (torchvision's names and shapes,
written out here from torchvision's module structure), and every CNN release layout's name
table (gcp.convert.layouts) run both ways and told apart on import."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gcp.convert
from gcp import checkpoint
from gcp.convert import layouts
from gcp.convert.torch_layout import entries, infer_model_spec, to_torch
from gcp.models import create_model

pytest.importorskip("torch", reason="writing .pth files needs torch (test extra)")


def _bn(prefix):
  return [f"{prefix}.{leaf}" for leaf in ("weight", "bias", "running_mean", "running_var")]


def vgg16_bn_names():
  """torchvision vgg16_bn with its last max-pool dropped (a GCP head follows) and the
  mpncov reduction block."""
  names = []
  for index in (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40):  # conv, BN, ReLU (+ pool)
    names += [f"features.{index}.weight", f"features.{index}.bias", *_bn(f"features.{index + 1}")]
  names += ["layer_reduce.weight", *_bn("layer_reduce_bn")]
  return names + [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]


def mobilenet_v2_names():
  """torchvision mobilenet_v2: ConvBNReLU = (conv, BN); block 1 has no expansion conv."""
  names = ["features.0.0.weight", *_bn("features.0.1")]
  for block in range(1, 18):
    slots = ["conv.0.0.weight", *_bn("conv.0.1")]
    if block > 1:  # expand ConvBNReLU, depthwise ConvBNReLU, project conv, BN
      slots += ["conv.1.0.weight", *_bn("conv.1.1"), "conv.2.weight", *_bn("conv.3")]
    else:  # depthwise ConvBNReLU, project conv, BN
      slots += ["conv.1.weight", *_bn("conv.2")]
    names += [f"features.{block}.{s}" for s in slots]
  return names + ["features.18.0.weight", *_bn("features.18.1"), "classifier.1.weight",
                  "classifier.1.bias"]


def random_variables(spec, seed=0):
  """Variables of `create_model(**spec)` with random values, without compiling `init`."""
  model = create_model(**spec)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 96, 96, 3))))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


CASES = {
    "vgg16_bn": (dict(arch="vgg16_bn", head="isqrt", reduction_dim=8, width=8, hidden=32),
                 vgg16_bn_names),
    "mobilenet_v2": (dict(arch="mobilenet_v2", head="gap", width_mult=0.25),
                     mobilenet_v2_names),
}


@pytest.mark.parametrize("arch", CASES)
def test_names_are_torchvisions_and_round_trip_is_exact(arch, tmp_path):
  options, expected_names = CASES[arch]
  spec = {**options, "num_classes": 7}
  variables = random_variables(spec)
  tensors = to_torch(variables)
  assert sorted(tensors) == sorted(expected_names())
  # torchvision layouts: OIHW convs (depthwise: [C, 1, 3, 3]), [out, in] dense.
  if arch == "mobilenet_v2":
    assert tensors["features.0.0.weight"].shape == (8, 3, 3, 3)
    assert tensors["features.2.conv.1.0.weight"].shape[1:] == (1, 3, 3)
    assert tensors["classifier.1.weight"].shape == (7, 1280)
  else:
    assert tensors["features.0.weight"].shape == (8, 3, 3, 3)
    assert tensors["classifier.0.weight"].shape == (32, 36)

  checkpoint.save_variables(str(tmp_path / "ckpt"), variables, spec)
  gcp.convert.export(str(tmp_path / "ckpt"), str(tmp_path / "m.pth"))
  converted_spec, back = gcp.convert.convert(str(tmp_path / "m.pth"))
  assert {k: converted_spec[k] for k in spec} == spec
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)


# A model each PyTorch CNN layout holds (32 px images would do; the shapes are all we use).
LAYOUT_MODELS = {
    "torchvision": dict(arch="resnet18", head="gap", width=8),
    "mpncovresnet": dict(arch="resnet50", head="dropcov", width=8, reduction_dim=8),
    "fastmpn_vgg": CASES["vgg16_bn"][0],
    "fastmpn_densenet": dict(arch="densenet121", head="isqrt", growth_rate=8,
                             block_config=(1, 2, 1, 1), num_init_features=16, reduction_dim=8),
    "fastmpn_inception": dict(arch="inception_v3", head="isqrt", reduction_dim=8),
    "gcp_opt_mobilenet": dict(arch="mobilenet_v2", head="isqrt", width_mult=0.25,
                              reduction_dim=8),
    "fastmpn_resnet": dict(arch="resnet18", head="isqrt", width=8, reduction_dim=8),
    "fastmpn_resnet_finetune": dict(arch="resnet18", head="isqrt", width=8, reduction_dim=8),
}


def test_every_cnn_layout_is_tested():
  assert {n for n, l in layouts.LAYOUTS.items() if l.renames} == set(LAYOUT_MODELS)


@pytest.mark.parametrize("name", LAYOUT_MODELS)
def test_layout_tables_run_both_ways_and_are_told_apart(name):
  layout = layouts.LAYOUTS[name]
  spec = {**LAYOUT_MODELS[name], "num_classes": 5}
  assert layout.fits(spec) == ""
  canonical = to_torch(random_variables(spec))
  release = layout.export(random_variables(spec), spec)
  assert len(release) == len(canonical)
  assert {layout.renames.to_canonical(n) for n in release} == set(canonical)
  # Import tells the layout from the names alone (the canonical ones need no telling).
  detected = layouts.detect("pytorch", release)
  assert (detected.name if detected else None) == (name if layout.signature else None)


def test_every_head_parameter_has_a_name():
  model = create_model("resnet18", head="dropcov", num_classes=3, reduction_dim=8, width=8)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  names = [e.torch_name for e in entries(shapes)]
  assert len(names) == len(set(names)) == len(jax.tree.leaves(shapes))
  assert {"eca_layer.conv.weight", "layer_reduce.weight", "layer_reduce_bn.running_var",
          "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight"} <= set(names)
  spec = infer_model_spec(to_torch(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)))
  assert spec == dict(arch="resnet18", width=8, small_input=False, reduction_dim=8,
                      head="dropcov", num_classes=3)


def test_a_fine_tuned_vgg_with_one_linear_classifier_is_read():
  """fast-MPN-COV's fine-tuned VGGs (--pretrained) end in one Linear layer
  (classifier.weight): our `hidden=0`."""
  spec = {**CASES["vgg16_bn"][0], "num_classes": 7, "hidden": 0, "reduction_dim": None}
  tensors = to_torch(random_variables(spec))
  assert {n for n in tensors if n.startswith("classifier")} == {"classifier.weight",
                                                                 "classifier.bias"}
  assert infer_model_spec(tensors) == {**spec, "arch": "vgg16_bn", "head": "isqrt"}
