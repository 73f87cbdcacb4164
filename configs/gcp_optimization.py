"""ImageNet-1k with GCP_Optimization's recipes (Wang et al., "What deep CNNs benefit from
global covariance pooling: an optimization perspective", CVPR 2020 / TPAMI 2023; SPEC §3).

iSQRT-COV with a 256-dim reduction, batch 256, SGD momentum 0.9, lr 0.1, wd 1e-4, and one
of three schedules: LRnorm (100 epochs, x0.1 every 30), LRfast (30 epochs,
lr_e = 0.1 (1 - e/52)^11) and LRadju (50 epochs, lr_e = 0.1 (1 - e/49)^2), with e = 0, 1,
... the epoch. The lr is for batch 256 and scales linearly with --config.batch_size.

Settings (`--config configs/gcp_optimization.py:ARCH,SCHEDULE`) and the published top-1
(%). SPEC §3 gives numbers for LRnorm only:

| setting | top-1 |
|---|---|
| resnet18,LRnorm | 75.48 |
| resnet34,LRnorm | 77.11 |
| resnet50,LRnorm | 78.56 |
| resnet101,LRnorm | 79.47 |
| mobilenet_v2,LRnorm | 74.39 |
| ARCH,LRfast / ARCH,LRadju (any ARCH above) | no number in SPEC |

  python main.py --config configs/gcp_optimization.py:resnet50,LRfast \\
      --workdir runs/gcpopt_r50_fast --config.data.data_dir=/path/to/tensorflow_datasets
"""
from configs.imagenet import imagenet_data, parse_setting
from gcp.config import base_config

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")
# schedule -> (epochs, schedule overrides)
SCHEDULES = {
    "LRnorm": (100, dict(schedule="step", decay_epochs=(30, 60, 90))),
    "LRfast": (30, dict(schedule="poly", poly_epochs=52.0, poly_power=11.0)),
    "LRadju": (50, dict(schedule="poly", poly_epochs=49.0, poly_power=2.0)),
}


def get_config(arg: str | None = None):
  arch, schedule = parse_setting(arg, "resnet50,LRnorm",
                                 [f"{a},{s}" for a in ARCHS for s in SCHEDULES])
  config = base_config()
  imagenet_data(config)
  config.model.arch, config.model.head = arch, "isqrt"
  config.model.reduction_dim = 256
  config.model.init_scheme = "torchvision"
  epochs, overrides = SCHEDULES[schedule]
  config.num_epochs = epochs
  config.optim.update(overrides)
  config.optim.learning_rate = 0.1
  config.optim.lr_reference_batch = 256
  config.optim.label_smoothing = 0.0
  config.log_every_steps = 500
  config.checkpoint_every_steps = 2000
  return config
