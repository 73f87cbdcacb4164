"""PyTorch port of the DropCov release's DeiT (mingzeG/DropCov, Transformers/src: `Vit` of
transformer.py, registered as Deit_drop_Small; model/visualTokens.py, model/vitBlock.py,
model/classifier.py, representation/multi_head_pooling.py and covariance.py), with
timm 0.4.12's `DenseBlock` (timm/models/densenet.py) that its token stem is built from.

Module names are the release's, so `state_dict()` has the release's keys:
  visual_tokens.tokens.stem.0 (conv 3x3, bias), .stem.1 (max-pool)
  visual_tokens.tokens.stage.{0,2,4}.denselayer{1..6}.{conv1, conv2}: timm 0.4.12's
      `DenseBlock(norm_layer=nn.ReLU)` default, so `norm1` / `norm2` are ReLUs without
      parameters: ReLU -> conv 1x1 -> ReLU -> conv 3x3
  visual_tokens.tokens.stage.{1,3,5}.{norm, conv, pool}: the release's own
      `DenseTransition` (BatchNorm2d -> conv 1x1 -> avg-pool 2, no ReLU)
  visual_tokens.tokens.transition (conv 1x1 to the width, bias)
  cls_token, pos_embed (the sinusoidal table, a Parameter with requires_grad=False, so in
      the state_dict and in `parameters()`)
  blocks.{i}.{norm1, attn.qkv (no bias), attn.proj, norm2, mlp.fc1, mlp.fc2}
  norm; classifier.{representation.wr (no bias), visual_fc, cls_fc}
LayerNorm eps 1e-5 (PyTorch's default `nn.LayerNorm`), exact GELU. The release's
`pos_embed` has 1 + 196 rows whatever the image size (14 x 14 tokens at its 224 or 112
px); the port adds its first 1 + N rows, which is the release's sum at 224 px and lets the
tests run 32 px images (row p of the table does not depend on the number of rows).
Not ported: the 112-px variant without the last avg-pool.

Randomness (training): the token mask and the dropout mask on C may be passed in, so that
a test can replay the masks another implementation drew.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from references import torch_mp

RELEASE_TOKENS = 196  # visualTokens.num_patches with large_output False


def sinusoid_table(num_tokens: int, width: int) -> torch.Tensor:
  """The release's `get_sinusoid_encoding`: `[1, num_tokens, width]`, angle(p, j) =
  p / 10000^(2 floor(j / 2) / width), sin at even j, cos at odd j, in float64 then float32."""
  pos = np.arange(num_tokens, dtype=np.float64)[:, None]
  j = np.arange(width)
  table = pos / np.power(10000, 2 * (j // 2) / width)
  table[:, 0::2] = np.sin(table[:, 0::2])
  table[:, 1::2] = np.cos(table[:, 1::2])
  return torch.FloatTensor(table).unsqueeze(0)


class MultiHeadPooling(nn.Module):
  """The release's representation: q, k = chunks 0, 1 of wr(tokens) in `heads` heads of
  `wr_dim`; training: token mask (Dropout2d(0.2) on ones `[B * heads, N, wr_dim]`: one
  decision per (sample, head, token), as the torch versions of the release apply it to a
  3-D input), cross-covariance with one mean per sample and head removed, Dropout(0.5)."""

  def __init__(self, dim, num_heads=6, wr_dim=24, mean_removal="scalar"):
    super().__init__()
    self.num_heads, self.wr_dim, self.mean_removal = num_heads, wr_dim, mean_removal
    self.wr = nn.Linear(dim, 3 * num_heads * wr_dim, bias=False)

  def forward(self, x, token_mask=None, cov_mask=None):
    """`token_mask` `[B, heads, N]` and `cov_mask` `[B, heads, wr_dim, wr_dim]` hold 0 or the
    survivors' scale; drawn here when not given."""
    b, n, _ = x.shape
    qkv = self.wr(x).reshape(b, n, 3, self.num_heads, self.wr_dim).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]  # [B, heads, N, wr_dim]; the third chunk is unused
    if self.training:
      if token_mask is None:
        token_mask = torch.bernoulli(torch.full((b, self.num_heads, n), 0.8)) / 0.8
      q, k = q * token_mask[..., None], k * token_mask[..., None]
    dims = (2, 3) if self.mean_removal == "scalar" else (2,)
    q = q - q.mean(dim=dims, keepdim=True)
    k = k - k.mean(dim=dims, keepdim=True)
    cov = q.transpose(-1, -2) @ k / n  # [B, heads, wr_dim, wr_dim]
    if self.training:
      cov = cov * cov_mask if cov_mask is not None else F.dropout(cov, 0.5, True)
    return cov.reshape(b, -1)


class Classifier(nn.Module):
  """MGCrP with fusion 'sum_fc': visual_fc(representation(tokens[:, 1:])) + cls_fc(cls)."""

  def __init__(self, dim, num_classes, num_heads=6, wr_dim=24, mean_removal="scalar"):
    super().__init__()
    self.representation = MultiHeadPooling(dim, num_heads, wr_dim, mean_removal)
    self.visual_fc = nn.Linear(num_heads * wr_dim * wr_dim, num_classes)
    self.cls_fc = nn.Linear(dim, num_classes)

  def forward(self, x, token_mask=None, cov_mask=None):
    return (self.visual_fc(self.representation(x[:, 1:], token_mask, cov_mask))
            + self.cls_fc(x[:, 0]))


class DenseLayer(nn.Module):
  """timm 0.4.12's DenseLayer built with norm_layer=nn.ReLU: norm1 / norm2 are ReLUs."""

  def __init__(self, channels, growth, bn_size):
    super().__init__()
    self.norm1 = nn.ReLU()
    self.conv1 = nn.Conv2d(channels, bn_size * growth, 1, bias=False)
    self.norm2 = nn.ReLU()
    self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

  def forward(self, features):
    return self.conv2(self.norm2(self.conv1(self.norm1(torch.cat(features, 1)))))


class DenseBlock(nn.ModuleDict):
  def __init__(self, num_layers, num_input_features, bn_size, growth_rate):
    super().__init__({f"denselayer{j + 1}": DenseLayer(num_input_features + j * growth_rate,
                                                       growth_rate, bn_size)
                      for j in range(num_layers)})

  def forward(self, x):
    features = [x]
    for layer in self.values():
      features.append(layer(features))
    return torch.cat(features, 1)


class DenseTransition(nn.Sequential):
  def __init__(self, num_input_features, num_output_features):
    super().__init__()
    self.add_module("norm", nn.BatchNorm2d(num_input_features))
    self.add_module("conv", nn.Conv2d(num_input_features, num_output_features, 1, bias=False))
    self.add_module("pool", nn.AvgPool2d(2, 2))


class DenseNetStyleModule(nn.Module):
  """NCHW images -> tokens `[B, H/16 * W/16, dim]` (token_dim 64, 3 x (6 dense layers of
  growth 16, bn_size 2, transition to 128))."""

  def __init__(self, dim, token_dim=64, layers=6):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, token_dim, 3, padding=1),
                              nn.MaxPool2d(3, stride=2, padding=1))
    stage, channels = [], token_dim
    for _ in range(3):
      stage += [DenseBlock(layers, channels, 2, 16), DenseTransition(channels + layers * 16, 128)]
      channels = 128
    self.stage = nn.Sequential(*stage)
    self.transition = nn.Conv2d(128, dim, 1)

  def forward(self, x):
    return self.transition(self.stage(self.stem(x))).flatten(2).transpose(1, 2)


class VisualTokens(nn.Module):
  def __init__(self, dim, layers=6):
    super().__init__()
    self.tokens = DenseNetStyleModule(dim, layers=layers)

  def forward(self, x):
    return self.tokens(x)


# The release's constructors (transformer.py), as each sets its module-level configs:
# dim, depth, heads, MLP width, covariance heads and their width (`wr_dim`). T2T_ViT_14 sets
# no `wr_dim`, so keeps the configs' 24 (in a process that built no other model first).
RELEASES = {
    "Deit_drop_Tiny": dict(dim=240, depth=12, num_heads=4, mlp_dim=600, cov_heads=6,
                           wr_dim=14),
    "Deit_drop_Small": dict(dim=384, depth=12, num_heads=6, mlp_dim=1536, cov_heads=6,
                            wr_dim=24),
    "Deit_drop_Base": dict(dim=768, depth=12, num_heads=12, mlp_dim=3072, cov_heads=12,
                           wr_dim=24),
    "T2T_ViT_14": dict(dim=384, depth=14, num_heads=6, mlp_dim=1152, cov_heads=6, wr_dim=24),
}


class DeitDrop(nn.Module):
  """The release's `Vit` (by default Deit_drop_Small: dim 384, depth 12, 6 heads, MLP 1536,
  6 x 24 covariance heads; `RELEASES` has the others): NCHW images -> logits."""

  def __init__(self, dim=384, depth=12, num_heads=6, mlp_dim=1536, num_classes=1000,
               cov_heads=6, wr_dim=24, mean_removal="scalar"):
    super().__init__()
    self.visual_tokens = VisualTokens(dim)
    self.blocks = nn.ModuleList([torch_mp.Block(dim, num_heads, mlp_dim, qkv_bias=False,
                                                eps=1e-5) for _ in range(depth)])
    self.classifier = Classifier(dim, num_classes, cov_heads, wr_dim, mean_removal)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(sinusoid_table(1 + RELEASE_TOKENS, dim), requires_grad=False)
    self.norm = nn.LayerNorm(dim)

  def forward(self, x, token_mask=None, cov_mask=None):
    x = self.visual_tokens(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = x + self.pos_embed[:, :x.shape[1]]
    for block in self.blocks:
      x = block(x)
    return self.classifier(self.norm(x), token_mask, cov_mask)
