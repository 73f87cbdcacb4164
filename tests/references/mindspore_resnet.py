"""The MindSpore releases' ResNet + GCP head, built in MindSpore from SPEC §1-2 and §6.

Run as a script with a Python that has MindSpore (2.10 needs numpy < 2, so usually a
separate virtualenv); it imports neither gcp nor jax:

  python mindspore_resnet.py {resnet50,resnet18} {isqrt,dropcov} DIR [CKPT]

reads DIR/images.npy (`[B, H, W, 3]` float32), builds the network with random weights and
random BatchNorm statistics, and writes DIR/model.ckpt (mindspore.save_checkpoint, with
the releases' epoch_num / step_num entries) and DIR/logits.npy (evaluation mode). With
CKPT, it instead loads CKPT into the network as the releases' eval.py does
(load_checkpoint, load_param_into_net), strictly: it fails unless every parameter of the
network is loaded and every tensor of CKPT used; then it writes DIR/logits_loaded.npy.

Release conventions: ResNet-50 pads every conv and the max-pool TF-SAME (pad_mode='same')
with BatchNorm eps 1e-4; ResNet-18 pads symmetrically (max-pool: zero-pad 1, then VALID),
eps 1e-4 in blocks and the reduction BN and 1e-5 for the stem and downsample BNs, and
names its block BNs bn1d / bn2d. Head: layer_reduce (1x1 conv to 128) -> layer_reduce_bn ->
ReLU -> covariance -> iSQRT (5 iterations; DropCov: none at evaluation) -> triu -> fc with
1001 classes. DropCov adds eca_layer.conv (Conv1d, kernel 3), unused at evaluation.
"""
import sys

import mindspore as ms
import numpy as np
from mindspore import nn, ops

DIM, CLASSES = 128, 1001


def conv(cin, cout, k, stride, same):
  if same:
    return nn.Conv2d(cin, cout, k, stride, pad_mode="same", has_bias=False)
  return nn.Conv2d(cin, cout, k, stride, pad_mode="pad", padding=k // 2, has_bias=False)


class Bottleneck(nn.Cell):
  def __init__(self, cin, planes, stride):
    super().__init__()
    cout = planes * 4
    self.conv1, self.bn1 = conv(cin, planes, 1, 1, True), nn.BatchNorm2d(planes, eps=1e-4)
    self.conv2, self.bn2 = conv(planes, planes, 3, stride, True), nn.BatchNorm2d(planes, eps=1e-4)
    self.conv3, self.bn3 = conv(planes, cout, 1, 1, True), nn.BatchNorm2d(cout, eps=1e-4)
    self.relu = nn.ReLU()
    self.has_down = stride != 1 or cin != cout
    if self.has_down:
      self.down_sample_layer = nn.SequentialCell(
          [conv(cin, cout, 1, stride, True), nn.BatchNorm2d(cout, eps=1e-4)])

  def construct(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (self.down_sample_layer(x) if self.has_down else x))


class BasicBlock(nn.Cell):
  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1, self.bn1d = conv(cin, planes, 3, stride, False), nn.BatchNorm2d(planes, eps=1e-4)
    self.conv2, self.bn2d = conv(planes, planes, 3, 1, False), nn.BatchNorm2d(planes, eps=1e-4)
    self.relu = nn.ReLU()
    self.has_down = stride != 1 or cin != planes
    if self.has_down:
      self.down_sample_layer = nn.SequentialCell(
          [conv(cin, planes, 1, stride, False), nn.BatchNorm2d(planes, eps=1e-5)])

  def construct(self, x):
    y = self.relu(self.bn1d(self.conv1(x)))
    y = self.bn2d(self.conv2(y))
    return self.relu(y + (self.down_sample_layer(x) if self.has_down else x))


class ECA(nn.Cell):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv1d(1, 1, 3, pad_mode="pad", padding=1, has_bias=False)


class ResNetGCP(nn.Cell):
  def __init__(self, arch, head):
    super().__init__()
    bottleneck = arch == "resnet50"
    stages = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
    block = Bottleneck if bottleneck else BasicBlock
    self.bottleneck, self.head = bottleneck, head
    self.conv1 = conv(3, 64, 7, 2, bottleneck)
    self.bn1 = nn.BatchNorm2d(64, eps=1e-4 if bottleneck else 1e-5)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, pad_mode="same" if bottleneck else "valid")
    cin = 64
    layers = []
    for i, n in enumerate(stages):
      stride = 1 if i in (0, 3) else 2  # a GCP head keeps layer4 at stride 1
      cells = []
      for j in range(n):
        cells.append(block(cin, 64 * 2**i, stride if j == 0 else 1))
        cin = 64 * 2**i * (4 if bottleneck else 1)
      layers.append(nn.SequentialCell(cells))
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.layer_reduce = nn.Conv2d(cin, DIM, 1, pad_mode="valid", has_bias=False)
    self.layer_reduce_bn = nn.BatchNorm2d(DIM, eps=1e-4)
    if head == "dropcov":
      self.eca_layer = ECA()
    self.fc = nn.Dense(DIM * (DIM + 1) // 2, CLASSES)
    rows, cols = np.triu_indices(DIM)
    self.triu = ms.Tensor((rows * DIM + cols).astype(np.int32))

  def construct(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    if not self.bottleneck:
      x = ops.pad(x, (1, 1, 1, 1))
    x = self.maxpool(x)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = self.relu(self.layer_reduce_bn(self.layer_reduce(x)))
    b, c = x.shape[0], x.shape[1]
    x = x.reshape(b, c, -1)
    x = x - x.mean(axis=2, keep_dims=True)
    cov = ops.bmm(x, x.transpose(0, 2, 1)) / x.shape[2]
    if self.head == "isqrt":
      cov = isqrt(cov, 5)
    return self.fc(ops.gather(cov.reshape(b, c * c), self.triu, 1))


def isqrt(cov, num_iters):
  """SPEC §1: trace pre-normalisation, coupled Newton-Schulz, post-compensation."""
  eye = ops.eye(cov.shape[1], cov.shape[1], ms.float32).expand_dims(0)
  trace = (cov * eye).sum(axis=(1, 2), keepdims=True)
  a = cov / trace
  y, z = a, eye.broadcast_to(a.shape)
  for _ in range(num_iters):
    t = 0.5 * (3.0 * eye - ops.bmm(z, y))
    y, z = ops.bmm(y, t), ops.bmm(t, z)
  return y * ops.sqrt(trace)


def randomize(net, seed=0):
  rng = np.random.default_rng(seed)
  for name, p in net.parameters_and_names():
    shape = p.shape
    if name.endswith("moving_variance"):
      value = 0.5 + rng.random(shape)
    elif name.endswith(("moving_mean", "beta", "bias")):
      value = 0.1 * rng.normal(size=shape)
    elif name.endswith("gamma"):
      value = 0.8 + 0.4 * rng.random(shape)
    else:
      value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    p.set_data(ms.Tensor(value.astype(np.float32)))


def main(arch, head, out_dir, checkpoint=None):
  ms.set_context(mode=ms.PYNATIVE_MODE)
  net = ResNetGCP(arch, head)
  if checkpoint:
    not_loaded, unused = ms.load_param_into_net(net, ms.load_checkpoint(checkpoint),
                                                strict_load=True)
    if not_loaded or unused:
      sys.exit(f"{checkpoint}: parameters not loaded {not_loaded}, unused {unused}")
  else:
    randomize(net)
  net.set_train(False)
  images = np.load(f"{out_dir}/images.npy").transpose(0, 3, 1, 2)
  logits = net(ms.Tensor(np.ascontiguousarray(images))).asnumpy()
  if checkpoint:
    np.save(f"{out_dir}/logits_loaded.npy", logits)
    return
  np.save(f"{out_dir}/logits.npy", logits)
  ms.save_checkpoint(net, f"{out_dir}/model.ckpt",
                     append_dict={"epoch_num": 100, "step_num": 500400})


if __name__ == "__main__":
  main(*sys.argv[1:])
