"""Second-order diagnostics on real features: the eigenvalue spectrum of the pooled
covariance, the Newton-Schulz residual per iteration, and how far iSQRT(N) is from the
exact matrix square root.

Exact references are float64 eigendecompositions of the (float32) covariances.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gcp import ops
from gcp.analysis import probe

# Eigenvalues below this fraction of an image's largest count as zero (rank).
RANK_TOLERANCE = 1e-6
# Covariance traces below this fraction of the median: constant features (left out).
CONSTANT_TOLERANCE = 1e-6


def head_features(model, variables: dict, images, *, train: bool = False):
  """What the pooling head pools, `[B, M, d]` float32: for second-order heads the output
  of their `features` (after the reduction block, what the covariance is taken of); for
  other heads (GAP, ViT token heads) their input, as M = H * W (or tokens) samples of C."""
  head = getattr(model, probe.HEAD, None)
  if head is not None and hasattr(head, "features"):
    x = probe.capture(model, variables, images, probe.HEAD, method="features", train=train)
  else:
    x = probe.capture(model, variables, images, probe.HEAD, inputs=True, train=train)
  return ops.upcast(x.reshape(x.shape[0], -1, x.shape[-1]))


@functools.partial(jax.jit, static_argnums=(0,))
def _covariances(model, variables, images):
  return ops.covariance(head_features(model, variables, images))


def pooled_covariances(model, variables: dict, batches) -> np.ndarray:
  """`[N, d, d]` covariances (`gcp.ops.covariance`) of the head features of the batches'
  N real examples."""
  out = [np.asarray(_covariances(model, variables, b["image"]))[np.asarray(b["mask"], bool)]
         for b in batches]
  return np.concatenate(out)


def exact_sqrt(cov: np.ndarray) -> np.ndarray:
  """Principal square root of symmetric PSD matrices `[..., d, d]` by a float64
  eigendecomposition (negative rounding-error eigenvalues clipped to 0)."""
  lam, u = np.linalg.eigh(np.asarray(cov, np.float64))
  return (u * np.sqrt(np.clip(lam, 0, None))[..., None, :]) @ np.swapaxes(u, -1, -2)


def spectrum(cov: np.ndarray) -> dict:
  """Eigenvalue spectrum of (nonzero) covariances `[N, d, d]` (float64).

  Returns:
    `normalized` `[d]`: eigenvalues / trace, descending, averaged over the N matrices;
    `effective_rank`: mean exp(entropy of eigenvalues / trace) (d for a flat spectrum, 1
    for rank one); `rank`: mean count above RANK_TOLERANCE x the largest;
    `condition`: median largest / smallest eigenvalue (inf when singular); `dim`: d.
  """
  lam = np.clip(np.linalg.eigvalsh(np.asarray(cov, np.float64))[..., ::-1], 0, None)
  p = lam / lam.sum(-1, keepdims=True)
  entropy = -np.sum(p * np.log(np.where(p > 0, p, 1)), axis=-1)
  condition = np.divide(lam[:, 0], lam[:, -1], out=np.full(len(lam), np.inf),
                        where=lam[:, -1] > 0)
  return {"normalized": p.mean(0).tolist(),
          "effective_rank": float(np.exp(entropy).mean()),
          "rank": float((lam > RANK_TOLERANCE * lam[:, :1]).sum(-1).mean()),
          "condition": float(np.median(condition)), "dim": int(lam.shape[-1])}


@functools.partial(jax.jit, static_argnums=(1,))
def _isqrt_iterates(cov, max_iters):
  """`[max_iters, ...]`: iSQRT after 1, 2, ..., max_iters iterations, in one compilation."""
  return jnp.stack([ops.isqrt(cov, k, method="newton_schulz")
                    for k in range(1, max_iters + 1)])


def newton_schulz_convergence(cov: np.ndarray, max_iters: int = 10) -> dict:
  """iSQRT (`gcp.ops.isqrt`, the Newton-Schulz matmul loop) of covariances `[N, d, d]`
  after k = 1, ..., `max_iters` iterations, against the exact square root.

  Returns lists over k (means over the N matrices, float64 norms of float32 results):
    `residual`: ||Y_k^2 - S||_F / ||S||_F, how far Y_k is from squaring to S;
    `sqrt_error`: ||Y_k - S^(1/2)||_F / ||S^(1/2)||_F, the distance from the exact root;
  and `iterations`: [1, ..., max_iters].
  """
  cov64 = np.asarray(cov, np.float64)
  root = exact_sqrt(cov64)
  norm = lambda a: np.linalg.norm(a, axis=(-2, -1))  # noqa: E731
  residual, sqrt_error = [], []
  for y in np.asarray(_isqrt_iterates(np.asarray(cov, np.float32), max_iters), np.float64):
    residual.append(float(np.mean(norm(y @ y - cov64) / norm(cov64))))
    sqrt_error.append(float(np.mean(norm(y - root) / norm(root))))
  return {"iterations": list(range(1, max_iters + 1)), "residual": residual,
          "sqrt_error": sqrt_error}


def diagnostics(model, variables: dict, batches, *, num_iters: int = 5,
                max_iters: int = 10) -> dict:
  """Spectrum and Newton-Schulz convergence on the head features of `batches`. Images
  whose features are constant (a covariance trace below CONSTANT_TOLERANCE x the median:
  zero up to rounding, no spectrum to speak of) are counted and left out.

  `num_iters` is the iteration count the model uses (its `num_iters`, 5 in the releases):
  `isqrt_error` is the sqrt_error at that count.
  """
  cov = pooled_covariances(model, variables, batches)
  trace = np.trace(cov, axis1=-2, axis2=-1)
  constant = trace <= CONSTANT_TOLERANCE * np.median(trace)
  if constant.all():
    raise ValueError("the head features of every image are constant (zero covariances)")
  samples = jax.eval_shape(lambda v, x: head_features(model, v, x), variables,
                           batches[0]["image"]).shape[1]
  convergence = newton_schulz_convergence(cov[~constant], max(max_iters, num_iters))
  return {"examples": int(cov.shape[0]), "constant_features": int(constant.sum()),
          "samples_per_image": samples, "spectrum": spectrum(cov[~constant]),
          "newton_schulz": convergence, "num_iters": num_iters,
          "isqrt_error": convergence["sqrt_error"][num_iters - 1]}

