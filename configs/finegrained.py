"""Fine-grained fine-tuning from an ImageNet iSQRT-COV model at 448 px (fast-MPN-COV, Li et
al., CVPR 2018; SPEC §3).

Start from an ImageNet checkpoint with the same architecture (ours, or a converted
mpncovresnet50/101 release file: python -m gcp.convert ...); the classifier is
re-initialised for the new classes and learns 5x faster. Batch 10, 100 epochs, constant
lr 1.2e-3, wd 1e-4 (SPEC §3; the release's finetune.sh has 1e-3), horizontal flip, test
= mean of the centre crop's and its mirror's logits.

VGG-16-BN (`vgg16_bn`, from mpncovvgg16_bn) follows the release's
finetune_mpncovvggd16.sh instead: the reduction block is kept and the FC-4096 classifier
becomes one Linear layer (`hidden=0`), batch 10, 40 epochs, lr 3e-3 x0.1 at epoch 20, the
classifier 20x faster, wd 1e-4.

Settings (`--config configs/finegrained.py:DATASET,ARCH`) and the published top-1 (%) (in
brackets: the authors' reproduction):

| setting | top-1 |
|---|---|
| cub,resnet50 | 88.1 (88.0) |
| aircraft,resnet50 | 90.0 (90.3) |
| cars,resnet50 | 92.8 (92.3) |
| cub,resnet101 | 88.7 |
| aircraft,resnet101 | 91.4 |
| cars,resnet101 | 93.3 |
| cub,vgg16_bn | 87.2 (87.0) |
| aircraft,vgg16_bn | 90.0 (91.7) |
| cars,vgg16_bn | 92.5 (93.2) |

  python main.py --config configs/finegrained.py:cub,resnet50 --workdir runs/cub_r50 \\
      --config.init_from=converted/mpncovresnet50 \\
      --config.data.data_dir=/path/to/tensorflow_datasets

Data: CUB-200-2011 and Stanford Cars are the TFDS data sets caltech_birds2011 and cars196.
FGVC-Aircraft is not in TFDS: arrange it as folders (train/ and test/ with one folder per
variant) and pass --config.data.name=folder:/path/to/aircraft.
"""
from configs.imagenet import parse_setting
from gcp.config import base_config

NORMALIZE = "normalize('imagenet')"
# name -> (data set, train split, eval split, train preprocessing, eval preprocessing)
DATASETS = {
    "cub": ("caltech_birds2011", "train", "test",
            f"resize_shorter(448)|random_crop(448)|flip_lr|{NORMALIZE}",
            f"resize_shorter(448)|center_crop(448)|{NORMALIZE}"),
    "cars": ("cars196", "train", "test", f"resize((448, 448))|flip_lr|{NORMALIZE}",
             f"resize((448, 448))|{NORMALIZE}"),
    "aircraft": ("folder:/path/to/fgvc_aircraft", "train", "test",
                 f"resize((512, 512))|random_crop(448)|flip_lr|{NORMALIZE}",
                 f"resize((512, 512))|center_crop(448)|{NORMALIZE}"),
}


def get_config(arg: str | None = None):
  dataset, arch = parse_setting(arg, "cub,resnet50", [
      f"{d},{a}" for d in DATASETS for a in ("resnet50", "resnet101", "vgg16_bn")])
  config = base_config()
  (config.data.name, config.data.train_split, config.data.eval_split,
   config.data.train_pp, config.data.eval_pp) = DATASETS[dataset]
  config.data.shuffle_buffer = 10_000
  config.model.arch, config.model.head = arch, "isqrt"
  config.model.reduction_dim = 256
  config.init_dont_load = "^(params|batch_stats)/fc/"
  config.optim.learning_rate = 1.2e-3
  config.optim.schedule = "constant"
  config.optim.classifier_lr_mult = 5.0
  config.optim.label_smoothing = 0.0
  config.batch_size = 10
  config.eval_batch_size = 10
  config.eval_flip = True
  config.num_epochs = 100
  if arch == "vgg16_bn":
    config.model.hidden = 0
    config.init_dont_load = "^(params|batch_stats)/classifier"
    config.optim.learning_rate = 3e-3
    config.optim.schedule = "step"
    config.optim.decay_epochs = (20,)
    config.optim.classifier_lr_mult = 20.0
    config.num_epochs = 40
  return config
