"""PyTorch port of the Moment Probing release's Swin Transformer (mingzeG/Moment-Probing,
models/swin_transformer.py: timm 0.6's Swin with `tuning_mode` 'psrp' blocks and
`probing_mode` 'mp'), written from the release's code. The MP head and PSRP are
`references.torch_mp`'s ports of models/representation/{MP,PSRP}.py.

Module names are the release's, so `state_dict()` has its keys:
  patch_embed.{proj, norm},
  layers.{i}.blocks.{j}.{norm1, attn.{qkv, proj, relative_position_bias_table},
      norm2, mlp.{fc1, fc2}, psrp.{down, up_weight, up_bias}},
  layers.{i}.downsample.{norm, reduction}, norm, and
  head (Linear) or head.{proj, ln, downblocks.0.0, downblocks.0.2, classifier1, classifier2},
with the buffers layers.{i}.blocks.{j}.attn.relative_position_index and, in shifted
blocks, layers.{i}.blocks.{j}.attn_mask.
Sizes are arguments (a reduced model runs the same block code). Differences from the
release, none affecting the function: the MP head's `in_dim` is the network's width (the
release hard-codes 1024, Swin-B's) and its classifier2 inputs are computed (2883 there);
dropout (0 in the release's Swin runs), drop-path and gradient checkpointing are left out.
"""
import torch
import torch.nn.functional as F
from torch import nn

from references.torch_mp import PSRP, MomentProbingViT, Mlp


def window_partition(x, ws):
  """(B, H, W, C) -> (B * nW, ws, ws, C), windows row-major per image."""
  b, h, w, c = x.shape
  x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, ws, ws, c)


def window_reverse(windows, ws, h, w):
  b = windows.shape[0] // ((h // ws) * (w // ws))
  x = windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, -1)


class WindowAttention(nn.Module):
  def __init__(self, dim, ws, num_heads):
    super().__init__()
    self.ws, self.num_heads = ws, num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
    grid = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    grid = grid.flatten(1)  # 2, ws*ws
    rel = (grid[:, :, None] - grid[:, None, :]).permute(1, 2, 0) + (ws - 1)
    self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
    self.qkv = nn.Linear(dim, 3 * dim, bias=True)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x, mask=None):
    bw, n, c = x.shape
    q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(
        2, 0, 3, 1, 4).unbind(0)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
    attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
    if mask is not None:
      nw = mask.shape[0]
      attn = (attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]).view(
          -1, self.num_heads, n, n)
    return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c))


class SwinTransformerBlock(nn.Module):
  """The release's block: window clamp (one unshifted window when the resolution is at
  most the window), -100 mask between regions of the rolled map, PSRP on the MLP branch."""

  def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0,
               mlp_ratio=4.0, tuning_mode=None):
    super().__init__()
    self.input_resolution, self.tuning_mode = input_resolution, tuning_mode
    self.window_size, self.shift_size = window_size, shift_size
    if min(input_resolution) <= window_size:
      self.window_size, self.shift_size = min(input_resolution), 0
    assert 0 <= self.shift_size < self.window_size
    self.norm1 = nn.LayerNorm(dim)
    self.attn = WindowAttention(dim, self.window_size, num_heads)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))
    attn_mask = None
    if self.shift_size > 0:
      h, w = input_resolution
      ws, s = self.window_size, self.shift_size
      img_mask = torch.zeros((1, h, w, 1))
      cnt = 0
      for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
          img_mask[:, hs, wsl, :] = cnt
          cnt += 1
      windows = window_partition(img_mask, ws).view(-1, ws * ws)
      attn_mask = windows.unsqueeze(1) - windows.unsqueeze(2)
      attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
    self.register_buffer("attn_mask", attn_mask)
    if tuning_mode == "psrp":
      self.psrp = PSRP(dim)

  def forward(self, x):
    h, w = self.input_resolution
    b, _, c = x.shape
    ws, s = self.window_size, self.shift_size
    y = self.norm1(x).view(b, h, w, c)
    if s > 0:
      y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
    y = self.attn(window_partition(y, ws).view(-1, ws * ws, c), mask=self.attn_mask)
    y = window_reverse(y.view(-1, ws, ws, c), ws, h, w)
    if s > 0:
      y = torch.roll(y, shifts=(s, s), dims=(1, 2))
    x = x + y.reshape(b, h * w, c)
    if self.tuning_mode == "psrp":
      weight, bias = self.psrp(x)
      return x + bias + (weight + 1) * self.mlp(self.norm2(x))
    return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
  def __init__(self, input_resolution, dim):
    super().__init__()
    self.input_resolution = input_resolution
    self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
    self.norm = nn.LayerNorm(4 * dim)

  def forward(self, x):
    h, w = self.input_resolution
    b, n, c = x.shape
    assert n == h * w, "input feature has wrong size"
    assert h % 2 == 0 and w % 2 == 0, f"x size ({h}*{w}) are not even."
    x = x.view(b, h, w, c)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
  def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio,
               downsample, tuning_mode):
    super().__init__()
    self.blocks = nn.ModuleList([
        SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                             0 if i % 2 == 0 else window_size // 2, mlp_ratio, tuning_mode)
        for i in range(depth)])
    self.downsample = PatchMerging(input_resolution, dim) if downsample else None

  def forward(self, x):
    for block in self.blocks:
      x = block(x)
    return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
  def __init__(self, img_size, patch_size, embed_dim):
    super().__init__()
    self.img_size = img_size
    self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
    self.norm = nn.LayerNorm(embed_dim)

  def forward(self, x):
    assert x.shape[2] == x.shape[3] == self.img_size, "input size doesn't match the model"
    return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
  """NCHW images -> logits. Defaults: Swin-B (swin_base_patch4_window7_224_in22k's shape).

  tuning_mode: None (plain blocks) or 'psrp' (MP+); probing_mode: 'mp' (the MP head, fed
  cls = mean of norm(x) and the unnormalised x) or anything else (Linear on that mean).
  """

  def __init__(self, img_size=224, patch_size=4, num_classes=1000, embed_dim=128,
               depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7, mlp_ratio=4.0,
               probing_mode="mp", tuning_mode=None, mp_hidden_dim=512, mp_heads=4):
    super().__init__()
    self.probing_mode = probing_mode
    self.num_features = embed_dim * 2 ** (len(depths) - 1)
    self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
    grid = img_size // patch_size
    self.layers = nn.Sequential(*[
        BasicLayer(embed_dim * 2 ** i, (grid // 2 ** i, grid // 2 ** i), depths[i],
                   num_heads[i], window_size, mlp_ratio, i < len(depths) - 1, tuning_mode)
        for i in range(len(depths))])
    self.norm = nn.LayerNorm(self.num_features)
    if probing_mode == "mp":
      self.head = MomentProbingViT(self.num_features, mp_hidden_dim, mp_heads, num_classes)
    else:
      self.head = nn.Linear(self.num_features, num_classes)

  def forward(self, x):
    x = self.layers(self.patch_embed(x))
    cls = F.adaptive_avg_pool1d(self.norm(x).transpose(1, 2), 1).flatten(1)
    if self.probing_mode == "mp":
      return self.head(cls, x)  # the head drops x[:, 0] (its ViT class-token slicing)
    return self.head(cls)
