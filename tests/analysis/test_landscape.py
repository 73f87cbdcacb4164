"""The gradient landscape: eta = 0 is the plain loss, the sweep at the logits matches the
closed form of softmax cross-entropy, and its slope at 0 is grad_norm^2."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import train
from gcp.analysis import landscape, probe


@pytest.fixture(scope="module")
def gap_net(tiny):
  return tiny.build("gap")


def plain_loss(model, variables, batch):
  """Mean loss over the real examples by the training code's evaluation step."""
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                           model_state={"batch_stats": variables["batch_stats"]},
                           opt_state=None)
  sums = train.make_eval_step(model)(state, jax.tree.map(jnp.asarray, batch))
  return float(sums["loss"]) / float(sums["count"])


def test_eta_zero_is_the_plain_loss(gap_net):
  model, variables, batch = gap_net
  result = landscape.gradient_landscape(model, variables, [batch], etas=(-1.0, 0.0, 2.0))
  assert result["layer"] == "bn"  # the last module before the head
  assert result["examples"] == 8  # padding excluded
  # Same float32 computation by another path (the evaluation step): rounding only.
  np.testing.assert_allclose(result["loss"][1], plain_loss(model, variables, batch),
                             rtol=1e-6)
  assert result["grad_change"][1] == 0.0
  assert result["grad_norm"] > 0


def test_training_mode_uses_batch_statistics(gap_net):
  model, variables, padded = gap_net
  with pytest.raises(ValueError, match="full batches"):
    landscape.gradient_landscape(model, variables, [padded], train=True)
  batch = {k: v[padded["mask"]] for k, v in padded.items()}
  result = landscape.gradient_landscape(model, variables, [batch], etas=(0.0,), train=True)
  logits = probe.logits(model, variables, batch["image"], train=True)
  expected = float(jnp.mean(train.cross_entropy(logits, batch["label"])))
  np.testing.assert_allclose(result["loss"][0], expected, rtol=1e-6)
  assert abs(expected - plain_loss(model, variables, batch)) > 1e-3  # the modes differ


def test_training_hook_logs_the_same_numbers(gap_net):
  model, variables, padded = gap_net
  batch = {k: v[padded["mask"]] for k, v in padded.items() if k != "mask"}
  hook = landscape.TrainingLandscape(model, etas=(-1.0, 0.0, 1.0))
  logged = hook(variables["params"], {"batch_stats": variables["batch_stats"]}, batch)
  full = landscape.gradient_landscape(model, variables, [batch], etas=(-1.0, 0.0, 1.0),
                                      train=True)
  assert hook.layer == "bn"
  for key in ("loss_range", "grad_change_max", "grad_norm"):
    np.testing.assert_allclose(logged[f"landscape_{key}"], full[key], rtol=1e-6)


def test_sweep_at_the_logits_matches_the_closed_form(gap_net):
  # At the logits z the per-example gradient is g = softmax(z) - onehot(label), so the
  # whole sweep has a closed form (computed here in float64).
  model, variables, batch = gap_net
  etas = (-3.0, -0.5, 0.0, 1.0, 4.0)
  result = landscape.gradient_landscape(model, variables, [batch], layer="fc", etas=etas)
  mask = batch["mask"]
  z = np.asarray(model.apply(variables, batch["image"]), np.float64)[mask]
  onehot = np.eye(3)[batch["label"][mask]]

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  g = softmax(z) - onehot
  for i, eta in enumerate(etas):
    shifted = z + eta * g
    loss = np.mean(-np.sum(onehot * np.log(softmax(shifted)), -1))
    change = np.sqrt(np.mean(np.sum((softmax(shifted) - softmax(z)) ** 2, -1)))
    # float32 against float64: 1e-5 relative on the loss, 1e-4 absolute on the change.
    np.testing.assert_allclose(result["loss"][i], loss, rtol=1e-5)
    np.testing.assert_allclose(result["grad_change"][i], change, atol=1e-4)
  np.testing.assert_allclose(result["grad_norm"], np.sqrt(np.mean(np.sum(g * g, -1))),
                             rtol=1e-5)


def test_slope_at_zero_is_grad_norm_squared(tiny):
  # d loss(y + eta g) / d eta at 0 = mean_i ||g_i||^2, by central differences (h = 1e-2;
  # curvature and float32 rounding: 2% tolerance). An iSQRT head, so that the custom VJPs
  # of the ops are on the path.
  model, variables, batch = tiny.build("isqrt", reduction_dim=None, num_iters=3)
  h = 1e-2
  result = landscape.gradient_landscape(model, variables, [batch], etas=(-h, h))
  slope = (result["loss"][1] - result["loss"][0]) / (2 * h)
  np.testing.assert_allclose(slope, result["grad_norm"] ** 2, rtol=2e-2)


def test_unknown_layer_lists_the_layers(gap_net):
  model, variables, batch = gap_net
  with pytest.raises(ValueError, match="no layer 'nope'.*stem, bn, head, fc"):
    landscape.gradient_landscape(model, variables, [batch], layer="nope")
