"""PyTorch port of the Moment Probing release (mingzeG/Moment-Probing, timm 0.6): its
`VisionTransformer` (models/vision_transformer.py) with the `Moment_Probing_ViT` head
(models/representation/MP.py) and MP+'s `PSRP` (models/representation/PSRP.py). Its
train.py saves through timm's `CheckpointSaver` (`references.torch_resnet.timm_checkpoint`:
no `module.` prefix, `state_dict_ema` with --model-ema, which its ImageNet scripts pass).

Module names are the release's, so `state_dict()` has the release's keys:
  patch_embed.proj, cls_token, pos_embed, blocks.{i}.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2, psrp.{down, up_weight, up_bias}}, norm, and
  head (probing_mode 'cls_token': a Linear) or
  head.{proj, ln, downblocks.0.0, downblocks.0.2, classifier1, classifier2} (probing_mode
  'mp').
This is also timm's own `VisionTransformer` layout (timm 0.4 to 1.0) with a Linear head.
LayerNorm eps 1e-6 in the backbone (1e-5 in the MP head's `ln`), exact GELU, attention
scale head_dim ** -0.5. Only the release's `cross_type='near'` is ported; the MP head's
2883 inputs of `classifier2` are computed from its sizes (2883 at the release's 512 / 4).
`mean_removal='channel'` is not the release's: it ports gcp's alternative for its test.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
  def __init__(self, dim, num_heads, qkv_bias=True):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(
        2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (d // self.num_heads) ** -0.5).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class PSRP(nn.Module):
  """MP+: h = ReLU(down(x)); returns (up_weight(h), up_bias(h))."""

  def __init__(self, channel=768, reduction=16):
    super().__init__()
    self.down = nn.Linear(channel, reduction, bias=False)
    self.up_weight = nn.Linear(reduction, channel, bias=False)
    self.up_bias = nn.Linear(reduction, channel, bias=False)

  def forward(self, x):
    h = F.relu(self.down(x))
    return self.up_weight(h), self.up_bias(h)


class Block(nn.Module):
  """Pre-norm block; tuning_mode 'psrp': x + bias + (weight + 1) * MLP(norm2(x)), PSRP fed
  the post-attention x. `eps` 1e-6 (timm's ViT); the DropCov port passes 1e-5."""

  def __init__(self, dim, num_heads, mlp_dim, tuning_mode="", qkv_bias=True, eps=1e-6):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, num_heads, qkv_bias)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, mlp_dim)
    self.tuning_mode = tuning_mode
    if tuning_mode == "psrp":
      self.psrp = PSRP(dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    y = self.mlp(self.norm2(x))
    if self.tuning_mode == "psrp":
      weight, bias = self.psrp(x)
      y = bias + (weight + 1) * y
    return x + y


def _remove_mean(x, mean_removal):
  """`[B, N, c]`: the release's `Covariance._remove_mean` (adaptive_avg_pool2d over the
  last two axes: one scalar per sample), or a mean per channel ('channel', gcp's)."""
  return x - x.mean(dim=(1, 2) if mean_removal == "scalar" else 1, keepdim=True)


class MomentProbingViT(nn.Module):
  """The release's `Moment_Probing_ViT` (cross_type 'near'): (classifier1(cls) +
  classifier2(flatten(conv(GELU(conv(C)))))) / 2, C_i the column-normalised cross-covariance
  of adjacent heads of proj(tokens[:, 1:]), each head through the shared `ln`."""

  def __init__(self, in_dim=768, hidden_dim=512, num_heads=4, num_classes=1000,
               mean_removal="scalar"):
    super().__init__()
    self.num_heads, self.mean_removal = num_heads, mean_removal
    self.proj = nn.Linear(in_dim, hidden_dim)
    self.ln = nn.LayerNorm(hidden_dim // num_heads)
    side = ((hidden_dim // num_heads - 3) // 2 + 1 - 3) // 2 + 1
    self.classifier1 = nn.Linear(in_dim, num_classes)
    self.classifier2 = nn.Linear((num_heads - 1) * side * side, num_classes)
    self.downblocks = nn.ModuleList([nn.Sequential(
        nn.Conv2d(num_heads - 1, num_heads - 1, 3, stride=2, bias=False), nn.GELU(),
        nn.Conv2d(num_heads - 1, num_heads - 1, 3, stride=2, bias=False))])

  def forward(self, cls_token, x):
    x = self.proj(x[:, 1:])
    b, n, d = x.shape
    heads = x.reshape(b, n, self.num_heads, d // self.num_heads).permute(2, 0, 1, 3)
    covs = []
    for i in range(self.num_heads - 1):
      h0 = _remove_mean(self.ln(heads[i]), self.mean_removal)
      h1 = _remove_mean(self.ln(heads[i + 1]), self.mean_removal)
      cov = (h0.transpose(1, 2) @ h1 / n).unsqueeze(1)  # [B, 1, c, c]
      covs.append(F.normalize(cov, dim=2))
    y = torch.cat(covs, dim=1)
    for layer in self.downblocks:
      y = layer(y)
    return (self.classifier1(cls_token) + self.classifier2(y.reshape(b, -1))) / 2


class PatchEmbed(nn.Module):
  def __init__(self, patch, dim):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, stride=patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
  """NCHW images -> logits.

  tuning_mode: '' or 'linear_probe' (plain blocks) or 'psrp' (MP+); probing_mode:
  'cls_token' (Linear head) or 'mp'. `mp_hidden_dim` / `mp_heads`: the MP head's 512 / 4.
  """

  def __init__(self, image_size=224, patch=16, dim=768, depth=12, num_heads=12, mlp_dim=3072,
               num_classes=1000, tuning_mode="", probing_mode="cls_token", mp_hidden_dim=512,
               mp_heads=4):
    super().__init__()
    self.probing_mode = probing_mode
    self.patch_embed = PatchEmbed(patch, dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // patch) ** 2, dim) * 0.02)
    self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_dim, tuning_mode)
                                  for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    if probing_mode == "mp":
      self.head = MomentProbingViT(dim, mp_hidden_dim, mp_heads, num_classes)
    else:
      self.head = nn.Linear(dim, num_classes)

  def forward(self, x):
    x = self.patch_embed(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
    x = self.norm(self.blocks(x))
    if self.probing_mode == "mp":
      return self.head(x[:, 0], x)  # fc_norm is an Identity with the class token
    return self.head(x[:, 0])


def randomize_(model: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
  """Every trainable parameter and BatchNorm statistic away from its initialisation:
  weights + N(0, scale^2), LayerNorm / BatchNorm weights 1 + N(0, scale^2), running
  variances in [0.5, 1.5). Frozen parameters (DropCov's fixed `pos_embed`) are left alone."""
  gen = torch.Generator().manual_seed(seed)
  noise = lambda t: scale * torch.randn(t.shape, generator=gen)
  with torch.no_grad():
    for m in model.modules():
      for name, p in m.named_parameters(recurse=False):
        if p.requires_grad:
          norm_weight = isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)) and name == "weight"
          p.copy_((torch.ones_like(p) if norm_weight else p) + noise(p))
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.copy_(noise(m.running_mean))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
  return model
