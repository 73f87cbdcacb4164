"""DeiTs on ImageNet-1K from scratch, with and without DropCov's transformer head (Wang et
al., "DropCov", NeurIPS 2022; SPEC §4).

`linear`: DeiT-S as published (patch embedding, learned position embedding, class-token
classifier). `dropcov`: the DropCov release's DeiT-S (`Deit_drop_Small`, 25,586,576
parameters): convolutional token stem with a sinusoidal position embedding, qkv without
bias and LayerNorm eps 1e-5 (`model.stem='conv'`), and the DropCov token head (token
dropout 0.2, per-head cross-covariance of 6 heads x 24, dropout 0.5, plus the class-token
classifier). The release's checkpoints convert into it (`python -m gcp.convert`, layout
dropcov_deit) and can start a run with --config.init_from.

The release trains three more sizes of the same network with the same head
(Transformers/scripts/): `dropcov_deit_t` (Deit_drop_Tiny: 240 wide, 4 heads, MLP 600;
6 covariance heads x 14), `deit_b16` (Deit_drop_Base; 12 x 24) and `dropcov_t2t_vit_14`
(T2T_ViT_14: 384 x 14 blocks, MLP 1152, on the conv stem; 6 x 24). Its README publishes a
checkpoint for the last (82.7, "T2T-ViT-14-S+DropCov"); its script names the model
T2T_ViT_Drop_14, which the code does not register.

Recipe (SPEC §4, the scripts): AdamW lr 1e-3 for batch 1024 (linear scaling), wd 0.03
(DeiT-B: lr 5e-4 for batch 512, wd 0.065), 300 epochs, 5 warmup epochs from 1e-6, cosine to
1e-5 (DeiT's warmup and minimum lr), drop-path 0.1, RandAugment m9-mstd0.5, mixup 0.8 /
cutmix 1.0, label smoothing 0.1, random erasing 0.25, EMA 0.99996 (DeiT's; reported as
ema_eval_top1).

Settings (`--config configs/deit_dropcov.py:ARCH,HEAD`) and the published top-1 (%):

| setting | top-1 |
|---|---|
| deit_s16,linear | 79.8 |
| deit_s16,dropcov | 82.4 |
| dropcov_t2t_vit_14,dropcov | 82.7 |
| dropcov_deit_t,dropcov | none published |
| deit_b16,dropcov | none published |

  python main.py --config configs/deit_dropcov.py:deit_s16,dropcov --workdir runs/deit_dc \\
      --config.data.data_dir=/path/to/tensorflow_datasets
"""
from configs.imagenet import imagenet_data, parse_setting
from gcp.config import base_config

NORMALIZE = "normalize('imagenet')"
# arch -> the release's covariance heads and their width (transformer.py's constructors).
COV_HEADS = {"deit_s16": (6, 24), "dropcov_deit_t": (6, 14), "deit_b16": (12, 24),
             "dropcov_t2t_vit_14": (6, 24)}


def get_config(arg: str | None = None):
  arch, head = parse_setting(arg, "deit_s16,dropcov", [
      "deit_s16,linear", *(f"{a},dropcov" for a in COV_HEADS)])
  config = base_config()
  imagenet_data(config)
  config.data.train_pp = (f"inception_crop(224)|flip_lr|randaug(2, 9, mstd=0.5)|"
                          f"{NORMALIZE}|random_erase(0.25)")
  config.data.eval_pp = f"resize_shorter(256)|center_crop(224)|{NORMALIZE}"
  config.data.mixup_alpha, config.data.cutmix_alpha = 0.8, 1.0
  config.model.arch, config.model.head = arch, head
  config.model.stem = "conv" if head == "dropcov" else "patch"
  config.model.drop_path = 0.1
  config.model.cov_heads, config.model.cov_head_dim = COV_HEADS[arch]

  o = config.optim
  o.optimizer, o.learning_rate, o.lr_reference_batch = "adamw", 1e-3, 1024
  o.weight_decay = 0.03
  o.schedule, o.warmup_epochs, o.warmup_init_lr, o.min_learning_rate = "cosine", 5, 1e-6, 1e-5
  o.label_smoothing = 0.1
  o.ema_decay = 0.99996
  config.batch_size = config.eval_batch_size = 1024
  if arch == "deit_b16":
    o.learning_rate, o.lr_reference_batch, o.weight_decay = 5e-4, 512, 0.065
    config.batch_size = config.eval_batch_size = 512
  config.num_epochs = 300
  config.log_every_steps = 500
  config.checkpoint_every_steps = 2000
  return config
