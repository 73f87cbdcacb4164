"""PyTorch port of the fast-MPN-COV release's meta-layer, written from SPEC §1.

Covpool (dense M x M centring matrix, hand-written backward), Sqrtm (coupled Newton-Schulz
storing every iterate, the hand-written backward of SPEC §1 including its final transpose)
and Triuvec. Used as the independent reference in tests (in float64) and as the speed and
memory baseline in benchmarks/meta_layer.py (in float32).

Layouts follow the release: features `[B, C, M]` (channels first), matrices `[B, d, d]`.
"""
import torch


class Covpool(torch.autograd.Function):
  """`[B, C, M]` -> `[B, C, C]`: X Ibar X^T with Ibar = I/M - 1 1^T / M^2 built per sample."""

  @staticmethod
  def forward(ctx, x):
    b, _, m = x.shape
    i_hat = (-1.0 / m / m) * torch.ones(m, m, dtype=x.dtype) + (1.0 / m) * torch.eye(
        m, dtype=x.dtype)
    i_hat = i_hat.view(1, m, m).repeat(b, 1, 1)
    ctx.save_for_backward(x, i_hat)
    return x.bmm(i_hat).bmm(x.transpose(1, 2))

  @staticmethod
  def backward(ctx, grad_output):
    x, i_hat = ctx.saved_tensors
    grad = grad_output + grad_output.transpose(1, 2)
    return grad.bmm(x).bmm(i_hat)


class Sqrtm(torch.autograd.Function):
  """iSQRT with N iterations; backward as released (SPEC §1)."""

  @staticmethod
  def forward(ctx, x, num_iters):
    b, d, _ = x.shape
    i3 = 3.0 * torch.eye(d, dtype=x.dtype).view(1, d, d).repeat(b, 1, 1)
    norm_a = (1.0 / 3.0) * x.mul(i3).sum(dim=1).sum(dim=1)
    a = x.div(norm_a.view(b, 1, 1))
    ys = torch.zeros(b, num_iters, d, d, dtype=x.dtype)
    zs = torch.eye(d, dtype=x.dtype).view(1, 1, d, d).repeat(b, num_iters, 1, 1)
    if num_iters < 2:
      yzy = a.bmm(0.5 * (i3 - a))
    else:
      zy = 0.5 * (i3 - a)
      ys[:, 0] = a.bmm(zy)
      zs[:, 0] = zy
      for i in range(1, num_iters - 1):
        zy = 0.5 * (i3 - zs[:, i - 1].bmm(ys[:, i - 1]))
        ys[:, i] = ys[:, i - 1].bmm(zy)
        zs[:, i] = zy.bmm(zs[:, i - 1])
      yzy = 0.5 * ys[:, num_iters - 2].bmm(i3 - zs[:, num_iters - 2].bmm(ys[:, num_iters - 2]))
    ctx.save_for_backward(x, a, yzy, norm_a, ys, zs)
    ctx.num_iters = num_iters
    return yzy * torch.sqrt(norm_a).view(b, 1, 1)

  @staticmethod
  def backward(ctx, grad_output):
    x, a, yzy, norm_a, ys, zs = ctx.saved_tensors
    n = ctx.num_iters
    b, d, _ = x.shape
    der_post = grad_output * torch.sqrt(norm_a).view(b, 1, 1)
    der_post_aux = (grad_output * yzy).sum(dim=1).sum(dim=1).div(2 * torch.sqrt(norm_a))
    i3 = 3.0 * torch.eye(d, dtype=x.dtype).view(1, d, d).repeat(b, 1, 1)
    if n < 2:
      der_ns = 0.5 * (der_post.bmm(i3 - a) - a.bmm(der_post))
    else:
      y, z = ys[:, n - 2], zs[:, n - 2]
      dldy = 0.5 * (der_post.bmm(i3 - y.bmm(z)) - z.bmm(y).bmm(der_post))
      dldz = -0.5 * y.bmm(der_post).bmm(y)
      for i in range(n - 3, -1, -1):
        y, z = ys[:, i], zs[:, i]
        yz = i3 - y.bmm(z)
        zy = z.bmm(y)
        dldy, dldz = (0.5 * (dldy.bmm(yz) - z.bmm(dldz).bmm(z) - zy.bmm(dldy)),
                      0.5 * (yz.bmm(dldz) - y.bmm(dldy).bmm(y) - dldz.bmm(zy)))
      der_ns = 0.5 * (dldy.bmm(i3 - a) - dldz - a.bmm(dldy))
    der_ns = der_ns.transpose(1, 2)
    grad = der_ns.div(norm_a.view(b, 1, 1))
    grad_aux = der_ns.mul(x).sum(dim=1).sum(dim=1)
    diag = der_post_aux - grad_aux / (norm_a * norm_a)
    grad = grad + diag.view(b, 1, 1) * torch.eye(d, dtype=x.dtype)
    return grad, None


class Triuvec(torch.autograd.Function):
  """`[B, d, d]` -> `[B, d(d+1)/2]`, upper triangle row-major."""

  @staticmethod
  def forward(ctx, x):
    b, d, _ = x.shape
    index = torch.ones(d, d).triu().reshape(d * d).nonzero().view(-1)
    ctx.save_for_backward(index)
    ctx.d = d
    return x.reshape(b, d * d)[:, index]

  @staticmethod
  def backward(ctx, grad_output):
    (index,) = ctx.saved_tensors
    grad = torch.zeros(grad_output.shape[0], ctx.d * ctx.d, dtype=grad_output.dtype)
    grad[:, index] = grad_output
    return grad.reshape(-1, ctx.d, ctx.d)


def meta_layer(x_bcm: torch.Tensor, num_iters: int = 5) -> torch.Tensor:
  """The release's GCP meta-layer: Triuvec(Sqrtm(Covpool(x))), `[B, C, M]` -> `[B, C(C+1)/2]`."""
  return Triuvec.apply(Sqrtm.apply(Covpool.apply(x_bcm), num_iters))
