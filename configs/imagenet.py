"""ImageNet-1k (TFDS `imagenet2012`) with the MindSpore releases' recipe (SPEC §3), and the
config to evaluate converted release checkpoints with.

Model: ResNet-50 + iSQRT-COV, d = 128 (Li et al., CVPR 2018; the MindSpore Fast-MPN table:
77.71% top-1). Train: random-resized crop 224 + flip; eval: shorter side 256, centre crop
224; SGD momentum 0.9, lr 0.1 x0.1 at epochs 30/60/90, 100 epochs, global batch 256,
wd 1e-4, label smoothing 0.1.

  python main.py --config configs/imagenet.py --workdir runs/r50_isqrt \\
      --config.data.data_dir=/path/to/tensorflow_datasets
  # evaluate a converted release checkpoint (python -m gcp.convert ...)
  python main.py --mode=eval --config configs/imagenet.py --workdir runs/eval_r50 \\
      --config.init_from=converted/r50_fastmpn

TFDS needs the official tars in its manual directory for the one-time prepare step.
"""
from gcp.config import base_config


def get_config():
  config = base_config()
  config.data.name = "imagenet2012"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  return config
