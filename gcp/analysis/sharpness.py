"""Sharpness of the loss at a checkpoint: the top Hessian eigenvalue (power iteration) and
the Hessian trace (Hutchinson), both from Hessian-vector products over a fixed batch set.

The Hessian is that of the mean cross-entropy over the batches' real examples with respect
to the trainable parameters (BatchNorm statistics fixed, or batch statistics with
`train=True`). Hessian-vector products differentiate the gradient a second time (`hvp`).
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gcp import ops, reporting
from gcp.analysis import probe, runs, stats

Tree = dict


def tree_dot(a: Tree, b: Tree) -> jax.Array:
  """Sum of elementwise products of two trees of the same structure, in at least float32
  (float64 trees in float64)."""
  return sum(jnp.vdot(ops.upcast(x), ops.upcast(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# Whole-tree operations as one compiled call each (eagerly, every leaf shape would compile
# its own small kernels).
_dot = jax.jit(tree_dot)
_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
_scale = jax.jit(lambda a, s: jax.tree.map(lambda x: x * s, a))


@functools.partial(jax.jit, static_argnums=(2,))
def _random_like(key, like: Tree, kind: str) -> Tree:
  """A tree shaped like `like` of N(0, 1) (`kind` 'normal') or random signs
  ('rademacher'), drawn as one flat vector (one generator call, whatever the tree)."""
  flat, unravel = ravel_pytree(like)
  draw = jax.random.normal if kind == "normal" else jax.random.rademacher
  return unravel(draw(key, flat.shape, jnp.float32))


def hvp(loss: Callable, params: Tree, vector: Tree) -> Tree:
  """H v for the Hessian H of `loss(params)` (a scalar function) at `params`, as the
  gradient of <grad loss, v> (reverse over reverse: the operators' custom VJPs have no
  forward mode, so `jvp` of `grad` is not available)."""
  return jax.grad(lambda p: tree_dot(jax.grad(loss)(p), vector))(params)


def with_matmul_isqrt(model):
  """`model` with an iSQRT head evaluated by Newton-Schulz matmuls (the same function).

  Second derivatives through the eigendecomposition paths ('eigh', 'gram', the CPU
  defaults) differentiate `eigh`, which is unbounded for repeated eigenvalues (dead
  channels make zero ones); the matmul loop has plain second derivatives. (The eig head,
  MPN-COV, has no matmul form: its products may be non-finite on such features.)
  """
  head = getattr(model, probe.HEAD, None)
  if head is None or not hasattr(head, "isqrt_method"):
    return model
  return model.clone(**{probe.HEAD: head.clone(isqrt_method="newton_schulz")})


def make_model_hvp(model, variables: dict, batches, *, train: bool = False,
                   label_smoothing: float = 0.0) -> Callable[[Tree], Tree]:
  """`v -> H v` (a params-shaped tree) for the mean loss over `batches` (each batch dict
  with `image`, `label`, optional `mask`) with respect to `variables["params"]`. An iSQRT
  head runs its Newton-Schulz method (`with_matmul_isqrt`)."""
  batches = list(batches)
  if train:
    runs.check_unpadded(batches)
  model = with_matmul_isqrt(model)
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}

  @jax.jit
  def batch_hvp(params, rest, batch, vector):
    loss = lambda p: probe.summed_loss(model, {"params": p, **rest}, batch,  # noqa: E731
                                       train=train, label_smoothing=label_smoothing)[0]
    return hvp(loss, params, vector)
  count = runs.num_examples(batches)
  if count == 0:
    raise ValueError("the batches hold no examples")

  def matvec(vector):
    total = None
    for batch in batches:
      out = batch_hvp(params, rest, batch, vector)
      total = out if total is None else _add(total, out)
    return _scale(total, 1.0 / count)
  return matvec


def top_eigenvalue(matvec: Callable[[Tree], Tree], like: Tree, key, *, num_iters: int = 20,
                   tol: float = 1e-3) -> dict:
  """Power iteration for the eigenvalue of largest magnitude of a symmetric operator
  (for a Hessian at a minimum, the top eigenvalue).

  Args:
    matvec: `v -> A v` on trees shaped like `like`.
    like: a tree giving the shapes (e.g. the parameters).
    key: PRNG key for the random start.
    num_iters: at most this many products.
    tol: stop when successive Rayleigh quotients differ by less than `tol` relatively.

  Returns:
    `eigenvalue` (the last Rayleigh quotient v^T A v), `estimates` (one per product),
    `converged`, and `vector` (the unit eigenvector estimate, a tree).
  """
  v = _random_like(key, like, "normal")
  v = _scale(v, 1.0 / jnp.sqrt(_dot(v, v)))
  estimates, converged = [], False
  bar = reporting.progress_bar(num_iters, 0, desc="power iteration")
  for _ in range(num_iters):
    av = matvec(v)
    estimates.append(float(_dot(v, av)))
    bar.update()
    bar.set_postfix(eigenvalue=f"{estimates[-1]:.4g}")
    norm = float(jnp.sqrt(_dot(av, av)))
    if norm == 0.0:
      converged = True
      break
    v = _scale(av, 1.0 / norm)
    if len(estimates) > 1 and abs(estimates[-1] - estimates[-2]) <= tol * abs(estimates[-1]):
      converged = True
      break
  bar.close()
  return {"eigenvalue": estimates[-1], "estimates": estimates, "converged": converged,
          "vector": v}


def hutchinson_trace(matvec: Callable[[Tree], Tree], like: Tree, key, *,
                     rel_error: float | None = 0.1, min_probes: int = 10,
                     max_probes: int = 100) -> dict:
  """Hutchinson's estimate of trace(A): the mean of z^T A z over Rademacher vectors z.

  Probes are drawn until the standard error is at most `rel_error` of the estimate's
  magnitude (checked from `min_probes` on, so that the error itself is estimated from
  enough samples) or `max_probes` are drawn; `rel_error=None` draws exactly `max_probes`.
  A trace near zero never meets a relative target: it stops at the cap.

  Returns:
    `trace` (the mean), `stderr` (sample std / sqrt(n); None for one probe), `interval`
    (95% t-interval), `significant` (the interval excludes zero), `probes`, `stopped_by`
    ("error target" or "probe cap"), `rel_error` (the target) and `samples`.
  """
  if max_probes < 1 or (min_probes < 2 and rel_error is not None):
    raise ValueError(f"need max_probes >= 1 and min_probes >= 2 (the error needs two "
                     f"samples), got {max_probes}, {min_probes}")
  samples, stopped_by = [], "probe cap"
  bar = reporting.progress_bar(max_probes, 0, desc="Hutchinson trace")
  for i in range(max_probes):
    z = _random_like(jax.random.fold_in(key, i), like, "rademacher")
    samples.append(float(_dot(z, matvec(z))))
    result = stats.summary(samples)
    bar.update()
    error = "" if result["stderr"] is None else f" +- {result['stderr']:.2g}"
    bar.set_postfix(trace=f"{result['mean']:.4g}{error}")
    if (rel_error is not None and len(samples) >= min_probes
        and result["stderr"] <= rel_error * abs(result["mean"])):
      stopped_by = "error target"
      break
  bar.close()
  return {"trace": result["mean"], "stderr": result["stderr"],
          "interval": result["interval"], "significant": stats.excludes(result["interval"]),
          "probes": len(samples), "stopped_by": stopped_by, "rel_error": rel_error,
          "samples": samples}


def describe_trace(result: dict) -> str:
  """One line for a `sharpness` result's trace: estimate, standard error, interval, probes,
  what stopped them, and "not significant" where the interval includes zero."""
  low, high = result["trace_interval"]
  stderr = result["trace_stderr"]
  text = (f"Hessian trace {result['trace']:.4g}"
          + ("" if stderr is None else f" +- {stderr:.2g} (95% [{low:.4g}, {high:.4g}])")
          + f", {result['trace_probes']} probes, stopped by the {result['trace_stopped_by']}")
  return text if result["trace_significant"] else f"{text}: NOT SIGNIFICANT (the interval " \
      "includes zero; more batches or probes may resolve it)"


def sharpness(model, variables: dict, batches, *, num_iters: int = 20, tol: float = 1e-3,
              trace_rel_error: float | None = 0.1, min_probes: int = 10,
              max_probes: int = 100, seed: int = 0, train: bool = False) -> dict:
  """Top Hessian eigenvalue and Hutchinson trace of the mean loss over `batches`; the trace
  draws probes until its standard error is `trace_rel_error` of it or `max_probes`
  (`hutchinson_trace`), and a trace that is not significant is reported on the console.

  Returns:
    `top_eigenvalue`, `power_iteration` (its estimates per product), `converged`, `trace`,
    `trace_stderr`, `trace_interval` (95%), `trace_significant`, `trace_probes`,
    `trace_stopped_by`, `trace_rel_error`, `num_params`, `examples`, `train`.
  """
  batches = list(batches)
  matvec = make_model_hvp(model, variables, batches, train=train)
  params = variables["params"]
  power_key, trace_key = jax.random.split(jax.random.key(seed))
  top = top_eigenvalue(matvec, params, power_key, num_iters=num_iters, tol=tol)
  trace = hutchinson_trace(matvec, params, trace_key, rel_error=trace_rel_error,
                           min_probes=min_probes, max_probes=max_probes)
  result = {"top_eigenvalue": top["eigenvalue"], "power_iteration": top["estimates"],
            "converged": top["converged"],
            "trace": trace["trace"],
            **{f"trace_{k}": trace[k] for k in ("stderr", "interval", "significant", "probes",
                                                "stopped_by", "rel_error")},
            "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
            "examples": runs.num_examples(batches), "train": train}
  (reporting.info if result["trace_significant"] else reporting.warn)(describe_trace(result))
  return result
