"""PyTorch ports written from SPEC §4: the Moment Probing head, a ViT block with MP+'s PSRP,
and a ViT with timm's module names (so its `state_dict()` has timm's keys).

Layouts follow PyTorch: the MP head's cross-covariances are `[B, 3, 128, 128]` (NCHW), and
the flattened map is channel-major. The ViT follows timm's `VisionTransformer` (timm 0.4 to
1.0): `patch_embed.proj`, `cls_token`, `pos_embed` (class token's entry first),
`blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`, `head`;
LayerNorm eps 1e-6, exact GELU, attention scale head_dim ** -0.5.
"""
import torch
import torch.nn.functional as F
from torch import nn


class MPHead(nn.Module):
  """Moment Probing: tokens `[B, 1 + N, D]` -> logits `[B, K]` (SPEC §4)."""

  def __init__(self, dim=768, num_classes=1000, proj_dim=512, groups=4, tokens=196,
               mean_removal="scalar"):
    super().__init__()
    self.groups, self.mean_removal = groups, mean_removal
    self.proj = nn.Linear(dim, proj_dim)
    self.norm = nn.LayerNorm(proj_dim // groups)
    self.conv0 = nn.Conv2d(groups - 1, groups - 1, 3, stride=2, bias=False)
    self.conv1 = nn.Conv2d(groups - 1, groups - 1, 3, stride=2, bias=False)
    side = ((proj_dim // groups - 3) // 2 + 1 - 3) // 2 + 1
    self.fc_cls = nn.Linear(dim, num_classes)
    self.fc_cov = nn.Linear((groups - 1) * side * side, num_classes)

  def forward(self, x):
    cls, p = x[:, 0], self.proj(x[:, 1:])
    b, n, c = p.shape
    h = self.norm(p.reshape(b, n, self.groups, c // self.groups).permute(0, 2, 1, 3))
    if self.mean_removal == "scalar":  # one scalar per sample and head: the release's quirk
      h = h - h.mean(dim=(2, 3), keepdim=True)
    else:
      h = h - h.mean(dim=2, keepdim=True)
    cov = torch.stack([h[:, i].transpose(1, 2) @ h[:, i + 1] / n
                       for i in range(self.groups - 1)], dim=1)  # [B, G - 1, c, c]
    cov = F.normalize(cov, dim=2)  # every column (fixed second index) to unit L2 norm
    y = self.conv1(F.gelu(self.conv0(cov)))
    return (self.fc_cls(cls) + self.fc_cov(y.flatten(1))) / 2


class Attention(nn.Module):
  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(
        2, 0, 3, 1, 4)
    attn = ((q * (d // self.num_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
  """timm's pre-norm block; with `psrp_rank`, MP+'s PSRP (SPEC §4):
  x = x + b + (1 + w) * MLP(LN2(x)), h = ReLU(down(x)), w = scale(h), b = shift(h)."""

  def __init__(self, dim, num_heads, mlp_dim, psrp_rank=0):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, mlp_dim)
    self.psrp_rank = psrp_rank
    if psrp_rank:
      self.psrp_down = nn.Linear(dim, psrp_rank, bias=False)
      self.psrp_scale = nn.Linear(psrp_rank, dim, bias=False)
      self.psrp_shift = nn.Linear(psrp_rank, dim, bias=False)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    y = self.mlp(self.norm2(x))
    if self.psrp_rank:
      h = F.relu(self.psrp_down(x))
      y = self.psrp_shift(h) + (1 + self.psrp_scale(h)) * y
    return x + y


class PatchEmbed(nn.Module):
  def __init__(self, patch, dim):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, stride=patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
  """timm's ViT (class-token pooling): NCHW images -> logits."""

  def __init__(self, image_size=32, patch=8, dim=32, depth=2, num_heads=2, mlp_dim=64,
               num_classes=10):
    super().__init__()
    self.patch_embed = PatchEmbed(patch, dim)
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
    self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // patch) ** 2, dim) * 0.02)
    self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_dim) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = nn.Linear(dim, num_classes)

  def forward(self, x):
    x = self.patch_embed(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
    return self.head(self.norm(self.blocks(x))[:, 0])
