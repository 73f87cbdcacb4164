"""DeiT-S on ImageNet-1K from scratch, with and without DropCov's transformer head (Wang et
al., "DropCov", NeurIPS 2022; SPEC §4).

`linear`: DeiT-S as published (patch embedding, learned position embedding, class-token
classifier). `dropcov`: the DropCov release's DeiT-S (`Deit_drop_Small`, 25,586,576
parameters): convolutional token stem with a sinusoidal position embedding, qkv without
bias and LayerNorm eps 1e-5 (`model.stem='conv'`), and the DropCov token head (token
dropout 0.2, per-head cross-covariance of 6 heads x 24, dropout 0.5, plus the class-token
classifier). The release's checkpoints convert into it (`python -m gcp.convert`, layout
dropcov_deit) and can start a run with --config.init_from.

Recipe (SPEC §4): AdamW lr 1e-3 for batch 1024 (linear scaling), wd 0.03, 300 epochs,
5 warmup epochs from 1e-6, cosine to 1e-5 (DeiT's warmup and minimum lr), drop-path 0.1,
RandAugment m9-mstd0.5, mixup 0.8 / cutmix 1.0, label smoothing 0.1, random erasing 0.25,
EMA 0.99996 (DeiT's; reported as ema_eval_top1).

Settings (`--config configs/deit_dropcov.py:ARCH,HEAD`) and the published top-1 (%):

| setting | top-1 |
|---|---|
| deit_s16,linear | 79.8 |
| deit_s16,dropcov | 82.4 |

  python main.py --config configs/deit_dropcov.py:deit_s16,dropcov --workdir runs/deit_dc \\
      --config.data.data_dir=/path/to/tensorflow_datasets
"""
from configs.imagenet import imagenet_data, parse_setting
from gcp.config import base_config

NORMALIZE = "normalize('imagenet')"


def get_config(arg: str | None = None):
  arch, head = parse_setting(arg, "deit_s16,dropcov", ["deit_s16,linear", "deit_s16,dropcov"])
  config = base_config()
  imagenet_data(config)
  config.data.train_pp = (f"inception_crop(224)|flip_lr|randaug(2, 9, mstd=0.5)|"
                          f"{NORMALIZE}|random_erase(0.25)")
  config.data.eval_pp = f"resize_shorter(256)|center_crop(224)|{NORMALIZE}"
  config.data.mixup_alpha, config.data.cutmix_alpha = 0.8, 1.0
  config.model.arch, config.model.head = arch, head
  config.model.stem = "conv" if head == "dropcov" else "patch"
  config.model.drop_path = 0.1

  o = config.optim
  o.optimizer, o.learning_rate, o.lr_reference_batch = "adamw", 1e-3, 1024
  o.weight_decay = 0.03
  o.schedule, o.warmup_epochs, o.warmup_init_lr, o.min_learning_rate = "cosine", 5, 1e-6, 1e-5
  o.label_smoothing = 0.1
  o.ema_decay = 0.99996
  config.batch_size = config.eval_batch_size = 1024
  config.num_epochs = 300
  config.log_every_steps = 500
  config.checkpoint_every_steps = 2000
  return config
