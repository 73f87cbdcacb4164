"""ImageNet-1k with fast-MPN-COV's PyTorch recipe (Li et al., CVPR 2018; SPEC §3).

iSQRT-COV with a 256-dim reduction (32,896 features), 65 epochs, batch 160, SGD momentum
0.9, lr 0.1 x0.1 at epochs 30/45/60, wd 1e-4, no label smoothing, torchvision init
(kaiming fan-out). The lr is for batch 160 and scales linearly with --config.batch_size.

Settings (`--config configs/fast_mpn_cov.py:ARCH`) and the published top-1 (%)
(in brackets: the authors' reproduction). The release's train.sh runs this one recipe for
every backbone its Basemodel wraps (src/network/base.py); it publishes numbers for three:

| setting | top-1 |
|---|---|
| resnet50 | 77.86 (78.29) |
| resnet101 | 78.79 (79.01) |
| vgg16_bn | 73.45 (76.02) |
| resnet18 | none published |
| resnet34 | none published |
| resnet152 | none published |
| alexnet | none published |
| vgg11 | none published |
| vgg11_bn | none published |
| vgg13 | none published |
| vgg13_bn | none published |
| vgg16 | none published |
| vgg19 | none published |
| vgg19_bn | none published |
| densenet121 | none published |
| densenet161 | none published |
| densenet169 | none published |
| densenet201 | none published |
| inception_v3 | none published |

Every backbone keeps the release's 224 px crops (Inception-v3 too: 5x5 features).

  python main.py --config configs/fast_mpn_cov.py:resnet50 --workdir runs/mpncov_r50 \\
      --config.data.data_dir=/path/to/tensorflow_datasets
"""
from configs.imagenet import imagenet_data, parse_setting
from gcp.config import base_config
from gcp.convert.layouts import FASTMPN_ARCHS


def get_config(arg: str | None = None):
  (arch,) = parse_setting(arg, "resnet50", list(FASTMPN_ARCHS))
  config = base_config()
  imagenet_data(config)
  config.model.arch, config.model.head = arch, "isqrt"
  config.model.reduction_dim = 256
  config.model.init_scheme = "torchvision"
  config.optim.learning_rate = 0.1
  config.optim.lr_reference_batch = 160
  config.optim.decay_epochs = (30, 45, 60)
  config.optim.label_smoothing = 0.0
  config.batch_size = 160
  config.eval_batch_size = 160
  config.num_epochs = 65
  config.log_every_steps = 500
  config.checkpoint_every_steps = 2000
  return config
