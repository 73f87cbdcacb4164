"""Moment Probing (Tao et al., ICCV 2023; SPEC §4): heads on a frozen ViT-B/16 pre-trained on
ImageNet-21k (the AugReg weights), against linear probing and full fine-tuning.

Methods: `linear` (class token -> linear classifier, head only), `mp` (the MP head: class
token + cross-covariance of the patch tokens, head only), `mp_plus` (MP + PSRP adapters in
every block: head and PSRP), `full` (linear head, every parameter trains). Trained
parameters are chosen by `config.trainable_params`; the others keep the pre-trained values
bit for bit and get no optimizer state.

ImageNet-1K recipe: AdamW lr 1e-4 (batch 256, linear scaling), wd 0.05, 5 warmup epochs
from 1e-7, cosine to 1e-8 over 30 epochs + 10 cooldown epochs at 1e-8, drop-path 0.1,
RandAugment m9-mstd0.5, mixup 0.8 / cutmix 1.0, label smoothing 0.1, random erasing 0.25,
EMA 0.99992 (reported as ema_eval_top1). SPEC gives this one recipe; full fine-tuning uses
it too. Fine-grained sets use the "simple augmentation" of the VPT benchmark (resize 256 x
256 + random crop 224 + flip; test resize 256 x 256 + centre crop 224), no mixing or
RandAugment, 100 epochs, 10 warmup, batch 64 (our choice of the schedule: SPEC gives only
the results).

Settings (`--config configs/moment_probing.py:DATASET,METHOD`) and the published top-1 (%):

| setting | top-1 |
|---|---|
| imagenet,linear | 82.04 |
| imagenet,mp | 83.15 |
| imagenet,mp_plus | 83.62 |
| imagenet,full | 83.58 |
| cifar100,mp | 93.8 |
| cifar100,mp_plus | 94.2 |
| cub,mp | 89.3 |
| cub,mp_plus | 89.9 |
| nabirds,mp | 84.9 |
| nabirds,mp_plus | 86.1 |
| flowers,mp | 99.6 |
| flowers,mp_plus | 99.7 |
| dogs,mp | 89.5 |
| dogs,mp_plus | 90.2 |
| cars,mp | 83.6 |
| cars,mp_plus | 89.4 |
| imagenet,linear,swin_b | none published |
| imagenet,mp,swin_b | none published |
| imagenet,mp_plus,swin_b | none published |
| imagenet,linear,convnext_b | none published |
| imagenet,mp,convnext_b | none published |
| imagenet,mp_plus,convnext_b | none published |

Swin-B (window 7) and ConvNeXt-B, ImageNet-21k pre-trained, are the release's other
backbones (models/swin_transformer.py, models/convnext.py); it ships no training script for
them, so their settings (a third field) run the ViT's ImageNet recipe above with ImageNet
normalisation (their 21k weights' inputs). What MP reads on them: Swin's class branch is
the mean of its normalised last-stage tokens, its second-order branch the unnormalised
tokens but the first (the release passes them to its ViT head, which drops token 0);
ConvNeXt's class branch is the pooled, LayerNorm'ed final map, its second-order branch the
final map through a 1x1 projection in interleaved channel groups (`gcp.heads.MPMapHead`).
MP+ adds PSRP to every Swin / ConvNeXt block as the release does. Their ImageNet-21k
weights are Microsoft's swin_base_patch4_window7_224_22k.pth and FB's
convnext_base_22k_224.pth, converted the same way:

  python -m gcp.convert swin_base_patch4_window7_224_22k.pth converted/swin_b_in21k \\
      --head mp --option num_classes=1000

Convert the AugReg ImageNet-21k ViT-B/16 file once, then train any method from it (the 21k
classifier is dropped; the head and PSRP start fresh):

  python -m gcp.convert B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz \\
      converted/vit_b16_in21k --head mp --option num_classes=1000
  python main.py --config configs/moment_probing.py:imagenet,mp --workdir runs/mp \\
      --config.init_from=converted/vit_b16_in21k \\
      --config.data.data_dir=/path/to/tensorflow_datasets

NABirds is not in TFDS: arrange it as folders (train/ and test/, one folder per class)
and pass --config.data.name=folder:/path/to/nabirds.
"""
from configs.imagenet import imagenet_data, parse_setting
from gcp.config import base_config

NORMALIZE = "normalize('inception')"  # AugReg ViTs take inputs in [-1, 1]
# The release's other ImageNet-21k backbones -> their inputs' normalisation and timm's
# RandAugment fill (the model's mean, as for the ViT).
_IMAGENET = ("normalize('imagenet')", "(124, 116, 104)")
OTHER_BACKBONES = {"swin_b": _IMAGENET, "convnext_b": _IMAGENET}
SIMPLE_TRAIN = f"resize((256, 256))|random_crop(224)|flip_lr|{NORMALIZE}"
SIMPLE_EVAL = f"resize((256, 256))|center_crop(224)|{NORMALIZE}"
# name -> (data set, train split, eval split)
FGVC = {
    "cifar100": ("cifar100", "train", "test"),
    "cub": ("caltech_birds2011", "train", "test"),
    "nabirds": ("folder:/path/to/nabirds", "train", "test"),
    "flowers": ("oxford_flowers102", "train", "test"),
    "dogs": ("stanford_dogs", "train", "test"),
    "cars": ("cars196", "train", "test"),
}
# method -> (token head, trained parameters)
METHODS = {
    "linear": ("linear", "^head/"),
    "mp": ("mp", "^head/"),
    "mp_plus": ("mp_plus", "^head/|/psrp/"),
    "full": ("linear", ""),
}


def get_config(arg: str | None = None):
  dataset, method, *arch = parse_setting(
      arg, "imagenet,mp", [f"imagenet,{m}" for m in METHODS] +
      [f"{d},{m}" for d in FGVC for m in ("mp", "mp_plus")] +
      [f"imagenet,{m},{a}" for a in OTHER_BACKBONES for m in ("linear", "mp", "mp_plus")])
  arch = arch[0] if arch else "vit_b16"
  normalize, fill = OTHER_BACKBONES.get(arch, (NORMALIZE, "(128, 128, 128)"))
  config = base_config()
  config.model.arch = arch
  config.model.head, config.trainable_params = METHODS[method]
  config.model.drop_path = 0.1
  config.init_dont_load = "^params/head/|/psrp/"  # fresh head (and PSRP) on any backbone

  o = config.optim
  o.optimizer, o.learning_rate, o.lr_reference_batch = "adamw", 1e-4, 256
  o.weight_decay = 0.05
  o.schedule, o.warmup_epochs, o.warmup_init_lr = "cosine", 5, 1e-7
  o.min_learning_rate, o.cooldown_epochs = 1e-8, 10
  o.label_smoothing = 0.1
  o.ema_decay = 0.99992
  config.batch_size = config.eval_batch_size = 256

  if dataset == "imagenet":
    imagenet_data(config)
    # timm fills RandAugment's geometric ops with the model's mean: 0.5 * 255 for the ViT.
    config.data.train_pp = (f"inception_crop(224)|flip_lr|"
                            f"randaug(2, 9, mstd=0.5, fill={fill})|"
                            f"{normalize}|random_erase(0.25)")
    config.data.eval_pp = f"resize_shorter(256)|center_crop(224)|{normalize}"
    config.data.mixup_alpha, config.data.cutmix_alpha = 0.8, 1.0
    config.num_epochs = 40  # 30 cosine + 10 cooldown
    config.log_every_steps = 500
    config.checkpoint_every_steps = 2000
  else:
    config.data.name, config.data.train_split, config.data.eval_split = FGVC[dataset]
    config.data.train_pp, config.data.eval_pp = SIMPLE_TRAIN, SIMPLE_EVAL
    config.data.shuffle_buffer = 10_000
    o.warmup_epochs, o.cooldown_epochs = 10, 0
    config.batch_size = config.eval_batch_size = 64
    config.num_epochs = 100
  return config
