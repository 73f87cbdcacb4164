"""ImageNet-1k (TFDS `imagenet2012`), the seed MindSpore releases' recipe (SPEC §3).

Papers: Li et al., "Towards faster training of global covariance pooling networks by
iterative matrix square root normalization" (CVPR 2018, Fast-MPN / iSQRT-COV); Wang et
al., "DropCov" (NeurIPS 2022). Recipe: 100 epochs, global batch 256, SGD momentum 0.9
(no Nesterov), lr 0.1 (DropCov 0.12) x0.1 at epochs 30/60/90, no warmup, wd 1e-4 on
kernels only, label smoothing 0.1; train random-resized crop 224 + flip, evaluation
shorter side 256 + centre crop 224; d = 128. The lr is for batch 256 and scales linearly
with --config.batch_size.

Settings (`--config configs/imagenet.py:ARCH,HEAD`) and the published top-1 (%):

| setting | top-1 |
|---|---|
| resnet18,gap | 70.53 |
| resnet18,isqrt | 74.64 |
| resnet18,dropcov | 73.8 |
| resnet34,gap | 73.68 |
| resnet34,isqrt | 76.27 |
| resnet34,dropcov | 76.13 |
| resnet50,gap | 76.07 |
| resnet50,isqrt | 77.71 |
| resnet50,dropcov | 77.77 |
| resnet101,gap | none published for this recipe |
| resnet101,isqrt | none published (fast-MPN-COV's d=256: 78.79) |
| resnet101,dropcov | none published (DropCov PyTorch d=256: 79.51) |

  python main.py --config configs/imagenet.py:resnet50,isqrt --workdir runs/r50_isqrt \\
      --config.data.data_dir=/path/to/tensorflow_datasets

Evaluate a checkpoint, e.g. a converted release model (python -m gcp.convert):

  python main.py --mode=eval --config configs/imagenet.py --workdir runs/eval_r50 \\
      --config.init_from=converted/r50_fastmpn

TFDS prepares imagenet2012 once from the official tars in its manual directory
(<data_dir>/downloads/manual/ILSVRC2012_img_{train,val}.tar).
"""
from gcp.config import base_config

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
HEADS = ("gap", "isqrt", "dropcov")


def parse_setting(arg: str | None, default: str, valid: list[str]) -> list[str]:
  """`"a,b"` -> ["a", "b"], checked against the settings a config file lists."""
  arg = arg or default
  if arg not in valid:
    raise ValueError(f"unknown setting {arg!r}; valid: {', '.join(valid)}")
  return arg.split(",")


def imagenet_data(config) -> None:
  """TFDS imagenet2012 with the releases' augmentation (the library defaults); evaluated
  on the data set's own split (imagenet2012's `validation`, an image folder's `val`)."""
  config.data.name = "imagenet2012"
  config.data.train_split = "train"


def get_config(arg: str | None = None):
  arch, head = parse_setting(arg, "resnet50,isqrt",
                             [f"{a},{h}" for a in ARCHS for h in HEADS])
  config = base_config()
  imagenet_data(config)
  config.model.arch, config.model.head = arch, head
  config.model.reduction_dim = 0 if head == "gap" else 128
  config.optim.learning_rate = 0.12 if head == "dropcov" else 0.1
  config.optim.lr_reference_batch = 256
  config.log_every_steps = 500
  config.checkpoint_every_steps = 2000
  return config
