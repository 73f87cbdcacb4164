"""Transfer's linear probe: the features are the classifier's input (they reproduce the
logits through its weights), the logistic fit is optimal (its gradient, written out in
numpy, vanishes), and the probe separates separable classes and not random labels."""
import jax
import numpy as np

from gcp.analysis import transfer


def test_features_are_the_classifiers_input(tiny):
  model, variables, batch = tiny.build("gap")
  assert transfer.classifier_layer(model, variables, batch["image"]) == "fc"
  (x, y), = transfer.extract(model, variables, [batch, batch])
  assert x.shape == (16, 4) and np.array_equal(y, np.tile(batch["label"][:8], 2))
  fc = variables["params"]["fc"]
  logits = np.asarray(model.apply(variables, batch["image"]))[:8]
  np.testing.assert_allclose(x[:8] @ np.asarray(fc["kernel"]) + np.asarray(fc["bias"]),
                             logits, rtol=1e-5, atol=1e-5)


def blobs(n, dim=6, classes=3, spread=0.3, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)) * 2
  y = rng.integers(0, classes, n)
  return (centres[y] + spread * rng.normal(size=(n, dim))).astype(np.float32), y


def test_logistic_fit_is_optimal():
  x, y = blobs(200, spread=2.0)  # overlapping classes: a finite, non-trivial optimum
  l2 = 1e-2
  params = jax.device_get(transfer.fit_logistic(x, y, l2, num_classes=3))
  w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  residual = p - np.eye(3)[y]
  grad_w = x.T @ residual / len(y) + l2 * w
  grad_b = residual.mean(0)
  # float32 L-BFGS to convergence: gradient below 1e-4 of the starting one (~0.5).
  assert np.abs(grad_w).max() < 5e-5 and np.abs(grad_b).max() < 5e-5


def test_probe_separates_separable_classes_and_not_random_labels():
  # The same centres (seed 0), fresh draws for the test examples.
  train = blobs(300)
  test = blobs(500)[0][300:], blobs(500)[1][300:]
  good = transfer.linear_probe(train, test, 3)
  assert good["top1"] > 0.95 and good["dim"] == 6 and good["test_examples"] == 200
  assert set(good["validation_top1"]) == {str(v) for v in transfer.L2_GRID}
  rng = np.random.default_rng(5)
  noise = transfer.linear_probe((train[0], rng.integers(0, 3, 300)),
                                (test[0], rng.integers(0, 3, 200)), 3)
  assert noise["top1"] < 0.5  # chance is 1/3
