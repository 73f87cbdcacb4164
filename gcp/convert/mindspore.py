"""MindSpore `.ckpt` files (the seed releases) read and written with protobuf + numpy alone.

Format (SPEC §6): a `Checkpoint` protobuf message `{repeated Value {string tag; TensorProto
{repeated int64 dims; string tensor_type; bytes tensor_content}}}`, written as one message
per tensor slice (a tensor over 512 MB is split along its first axis into values with the
same tag), optionally followed by a `crc_num` trailer. MindSpore itself is not needed.

Names: the releases' ResNets use torchvision's structure with MindSpore spellings
(`down_sample_layer`, `gamma` / `beta` / `moving_mean` / `moving_variance`, and
`bn1d` / `bn2d` in ResNet-18/34 blocks) and a 4-D Conv1d kernel for DropCov's ECA conv. One
table of spellings serves both ways: `canonical` renames a release's names to the
torchvision names of `gcp.convert.torch_layout` (dropping optimizer and schedule entries),
`release_names` renames torchvision names to the release's.
"""
import re

import ml_dtypes
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from gcp.convert.torch_layout import ECA, ConversionError

_DTYPES = {"Float16": np.float16, "Float32": np.float32, "Float64": np.float64,
           "BFloat16": ml_dtypes.bfloat16, "Int8": np.int8, "Int16": np.int16,
           "Int32": np.int32, "Int64": np.int64, "UInt8": np.uint8, "UInt16": np.uint16,
           "UInt32": np.uint32, "UInt64": np.uint64, "Bool": np.bool_}
_NAMES = {v: k for k, v in _DTYPES.items()}
# Optimizer state and training bookkeeping: not part of the network.
_SKIP = re.compile(r"^moments\.|^(learning_rate|global_step|momentum|epoch_num|step_num)$")
# The MindSpore spellings of torchvision's names: module components, BatchNorm leaves, and
# the BatchNorms of ResNet-18/34 blocks (`layerX.Y.bn1d`; bottleneck blocks keep `bn1`).
_COMPONENTS = {"downsample": "down_sample_layer"}
_BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
              "running_var": "moving_variance"}
_BLOCK_BN, _BASIC_SUFFIX = r"layer\d+\.\d+\.bn[12]", "d"
_ECA_SHAPE = (1, 1, 1, -1)  # MindSpore's Conv1d kernel [out, in, 1, k]; PyTorch's [out, in, k]
_CRC_TRAILER = 17  # b"crc_num" + a 10-byte checksum


def _checkpoint_class():
  """The `Checkpoint` message class, built from its schema (no generated code needed)."""
  f = descriptor_pb2.FileDescriptorProto(name="gcp_mindspore_checkpoint.proto",
                                         package="gcp_mindspore", syntax="proto2")
  tensor = f.message_type.add(name="TensorProto")
  label, types = descriptor_pb2.FieldDescriptorProto, descriptor_pb2.FieldDescriptorProto
  tensor.field.add(name="dims", number=1, label=label.LABEL_REPEATED, type=types.TYPE_INT64)
  tensor.field.add(name="tensor_type", number=2, label=label.LABEL_REQUIRED,
                   type=types.TYPE_STRING)
  tensor.field.add(name="tensor_content", number=3, label=label.LABEL_REQUIRED,
                   type=types.TYPE_BYTES)
  ckpt = f.message_type.add(name="Checkpoint")
  value = ckpt.nested_type.add(name="Value")
  value.field.add(name="tag", number=1, label=label.LABEL_REQUIRED, type=types.TYPE_STRING)
  value.field.add(name="tensor", number=2, label=label.LABEL_OPTIONAL,
                  type=types.TYPE_MESSAGE, type_name=".gcp_mindspore.TensorProto")
  ckpt.field.add(name="value", number=1, label=label.LABEL_REPEATED, type=types.TYPE_MESSAGE,
                 type_name=".gcp_mindspore.Checkpoint.Value")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName("gcp_mindspore.Checkpoint"))


_Checkpoint = _checkpoint_class()


def read(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a `.ckpt`, by its MindSpore name (slices of a split tensor joined)."""
  with open(path, "rb") as f:
    content = f.read()
  if content[-_CRC_TRAILER:-10] == b"crc_num":
    content = content[:-_CRC_TRAILER]
  ckpt = _Checkpoint()
  try:
    ckpt.ParseFromString(content)
  except message.DecodeError as e:
    raise ConversionError(f"{path} is not a readable MindSpore checkpoint (truncated, "
                          f"corrupt or encrypted file?): {e}") from e
  if not ckpt.value:
    raise ConversionError(f"{path} holds no tensors: not a MindSpore checkpoint?")
  parts: dict[str, list] = {}
  for value in ckpt.value:
    if not value.HasField("tensor"):
      continue  # MapTensor (embedding tables): never part of these networks
    parts.setdefault(value.tag, []).append(value.tensor)
  out = {}
  for tag, tensors in parts.items():
    dtype = _DTYPES.get(tensors[0].tensor_type)
    if dtype is None:
      raise ConversionError(f"{path}: tensor {tag!r} has unsupported type "
                            f"{tensors[0].tensor_type!r}")
    shape = tuple(tensors[0].dims)
    data = b"".join(t.tensor_content for t in tensors)
    if len(data) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
      raise ConversionError(f"{path}: tensor {tag!r} holds {len(data)} bytes, not the "
                            f"{np.prod(shape)} x {tensors[0].tensor_type} its shape "
                            f"{shape} needs (corrupt file?)")
    out[tag] = np.frombuffer(data, dtype).reshape(shape)
  return out


def write(path: str, tensors: dict[str, np.ndarray]) -> None:
  """Saves `{MindSpore name: array}` as a `.ckpt` that `mindspore.load_checkpoint` reads."""
  ckpt = _Checkpoint()
  for tag, array in tensors.items():
    array = np.ascontiguousarray(array)
    value = ckpt.value.add(tag=tag)
    value.tensor.dims.extend(array.shape)
    value.tensor.tensor_type = _NAMES[array.dtype.type]
    value.tensor.tensor_content = array.tobytes()
  with open(path, "wb") as f:
    f.write(ckpt.SerializeToString())


def _spell(module: str, leaf: str, components: dict, leaves: dict) -> tuple[str, str]:
  return ".".join(components.get(c, c) for c in module.split(".")), leaves.get(leaf, leaf)


def canonical(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """MindSpore release names -> torchvision-style names (float32); optimizer state and
  schedule entries dropped. DropCov's ECA conv keeps its name (`eca_layer.conv.weight`)."""
  components = {v: k for k, v in _COMPONENTS.items()}
  leaves = {v: k for k, v in _BN_LEAVES.items()}
  out = {}
  for name, value in tensors.items():
    if _SKIP.search(name):
      continue
    module, leaf = _spell(*name.rsplit(".", 1), components, leaves)
    if re.fullmatch(_BLOCK_BN + _BASIC_SUFFIX, module):
      module = module[:-len(_BASIC_SUFFIX)]
    value = np.asarray(value, np.float32)
    out[f"{module}.{leaf}"] = value.reshape(1, 1, -1) if name == ECA else value
  return out


def release_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision-style names (`gcp.convert.torch_layout.to_torch`) of a ResNet -> the
  MindSpore releases' names and shapes, which `load_param_into_net` puts into their network.
  A module is a BatchNorm if it has `running_var`; a block is a basic (ResNet-18/34) block
  if it has no `conv3`."""
  out = {}
  for name, value in tensors.items():
    module, leaf = name.rsplit(".", 1)
    basic = (re.fullmatch(_BLOCK_BN, module)
             and f"{module.rsplit('.', 1)[0]}.conv3.weight" not in tensors)
    is_bn = f"{module}.running_var" in tensors
    module, leaf = _spell(module, leaf, _COMPONENTS, _BN_LEAVES if is_bn else {})
    module += _BASIC_SUFFIX if basic else ""
    out[f"{module}.{leaf}"] = value.reshape(_ECA_SHAPE) if name == ECA else value
  return out
