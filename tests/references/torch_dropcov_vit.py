"""PyTorch ports written from SPEC §4 ("DropCov on vision transformers"): the DropCov token
head, the released DeiT-S convolutional token stem, the sinusoidal position embedding, and
a ViT built from them (blocks: `torch_mp.Block`, timm's names).

Module names follow the release (mingzeG/DropCov, Transformers/; its stem is SoT's
`DenseNetStyleModule`) so that the tests' weight copy doubles as the name map:
  head: wr (Linear D -> 3 * heads * head_dim, no bias), cls_fc, visual_fc
  stem: stem.0 (conv 3x3), stem.1 (max-pool), stage.{0,2,4} (dense blocks,
        denselayer{1..6}.{norm1,conv1,norm2,conv2}), stage.{1,3,5} (transitions: norm,
        conv, pool), transition (conv 1x1 to the width)
Layouts are PyTorch's: NCHW images, the head's C is `[B, heads, hd, hd]` and flattened
row-major. Randomness (training): the token mask and the dropout mask on C may be passed
in, so that a test can replay the masks another implementation drew.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from references import torch_mp


def sinusoid_table(num_tokens: int, width: int) -> torch.Tensor:
  """`[1, num_tokens, width]`: sin(p / 10000^(2i / width)) at channel 2i, cos of the same
  angle at channel 2i + 1; token 0 is the class token (computed in float64)."""
  pos = torch.arange(num_tokens, dtype=torch.float64)[:, None]
  freq = torch.exp(-math.log(10000.0) * torch.arange(0, width, 2, dtype=torch.float64) / width)
  table = torch.empty(num_tokens, width, dtype=torch.float64)
  table[:, 0::2] = torch.sin(pos * freq)
  table[:, 1::2] = torch.cos(pos * freq[: width // 2])
  return table[None].float()


class DropCovHead(nn.Module):
  """Tokens `[B, 1 + N, D]` -> logits `[B, K]` (SPEC §4)."""

  def __init__(self, dim, num_classes, heads=6, head_dim=24, token_drop=0.2, cov_drop=0.5,
               mean_removal="scalar"):
    super().__init__()
    self.heads, self.head_dim, self.mean_removal = heads, head_dim, mean_removal
    self.token_drop, self.cov_drop = token_drop, cov_drop
    self.wr = nn.Linear(dim, 3 * heads * head_dim, bias=False)
    self.cls_fc = nn.Linear(dim, num_classes)
    self.visual_fc = nn.Linear(heads * head_dim * head_dim, num_classes)

  def forward(self, x, token_mask=None, cov_mask=None):
    """`token_mask` `[B, heads, N]` and `cov_mask` `[B, heads, hd, hd]` hold 0 or the
    survivors' scale; drawn here (as the release: Dropout2d / Dropout) when not given."""
    cls, v = x[:, 0], x[:, 1:]
    b, n, _ = v.shape
    qkv = self.wr(v).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]  # [B, heads, N, hd]; the third chunk is unused
    if self.training:
      if token_mask is None:
        ones = torch.ones(b * self.heads, n, self.head_dim)
        token_mask = F.dropout2d(ones, self.token_drop, True)[..., 0].reshape(b, self.heads, n)
      q, k = q * token_mask[..., None], k * token_mask[..., None]
    dims = (2, 3) if self.mean_removal == "scalar" else (2,)
    q = q - q.mean(dim=dims, keepdim=True)
    k = k - k.mean(dim=dims, keepdim=True)
    cov = q.transpose(-1, -2) @ k / n  # [B, heads, hd, hd]
    if self.training:
      cov = cov * cov_mask if cov_mask is not None else F.dropout(cov, self.cov_drop, True)
    return self.cls_fc(cls) + self.visual_fc(cov.flatten(1))


class DenseLayer(nn.Module):
  def __init__(self, channels, growth, bn_size):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(channels)
    self.conv1 = nn.Conv2d(channels, bn_size * growth, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(bn_size * growth)
    self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

  def forward(self, x):
    return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
  def __init__(self, layers, channels, growth, bn_size):
    super().__init__({f"denselayer{j + 1}": DenseLayer(channels + j * growth, growth, bn_size)
                      for j in range(layers)})

  def forward(self, x):
    for layer in self.values():
      x = torch.cat([x, layer(x)], dim=1)
    return x


class Transition(nn.Sequential):
  """BN -> conv 1x1 -> avg-pool 2x2 / 2, no ReLU."""

  def __init__(self, channels, out):
    super().__init__()
    self.norm = nn.BatchNorm2d(channels)
    self.conv = nn.Conv2d(channels, out, 1, bias=False)
    self.pool = nn.AvgPool2d(2, 2)


class ConvTokenStem(nn.Module):
  """NCHW images -> tokens `[B, H/16 * W/16, dim]`: conv 3x3 (64) + max-pool 3x3/2, three
  dense blocks (6 layers, growth 16, bn_size 2) each followed by a transition to 128
  channels, conv 1x1 to `dim`."""

  def __init__(self, dim, token_dim=64, growth=16, layers=6, bn_size=2, transition_dim=128):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, token_dim, 3, padding=1),
                              nn.MaxPool2d(3, stride=2, padding=1))
    stage, channels = [], token_dim
    for _ in range(3):
      stage += [DenseBlock(layers, channels, growth, bn_size),
                Transition(channels + layers * growth, transition_dim)]
      channels = transition_dim
    self.stage = nn.Sequential(*stage)
    self.transition = nn.Conv2d(transition_dim, dim, 1)

  def forward(self, x):
    return self.transition(self.stage(self.stem(x))).flatten(2).transpose(1, 2)


class DropCovViT(nn.Module):
  """Conv stem -> [cls; tokens] + sinusoidal table -> pre-norm blocks -> LayerNorm (eps
  1e-6, as gcp's ViT) -> DropCov head."""

  def __init__(self, dim=32, depth=2, num_heads=2, mlp_dim=64, num_classes=10, heads=2,
               head_dim=4):
    super().__init__()
    self.stem = ConvTokenStem(dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.blocks = nn.Sequential(*[torch_mp.Block(dim, num_heads, mlp_dim)
                                  for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = DropCovHead(dim, num_classes, heads, head_dim)

  def forward(self, x):
    x = self.stem(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = x + sinusoid_table(x.shape[1], x.shape[2])
    return self.head(self.norm(self.blocks(x)))
