"""ImageNet-1k with GCP_Optimization's recipes (Wang et al., "What deep CNNs benefit from
global covariance pooling: an optimization perspective", CVPR 2020 / TPAMI 2023; SPEC §3).

iSQRT-COV with a 256-dim reduction, batch 256, SGD momentum 0.9, lr 0.1, wd 1e-4, and one
of three schedules: LRnorm (100 epochs, x0.1 every 30), LRfast (30 epochs,
lr_e = 0.1 (1 - e/52)^11) and LRadju (50 epochs, lr_e = 0.1 (1 - e/49)^2), with e = 0, 1,
... the epoch. The lr is for batch 256 and scales linearly with --config.batch_size.

ShuffleNetV2 1.0x (ShuffleNetV2_MPNCOV) trains with the release's own script
(src/main_shufflenet.py): batch 1024, lr 0.5 (for batch 1024), wd 4e-5 and, for every
schedule, a linear decay to 0 over the run, lr_e = 0.5 (1 - e/E), in E = 240 (LRnorm), 60
(LRfast) or 100 (LRadju) epochs. The release decays per iteration, this recipe per epoch
(`poly` with power 1: at most 0.5/E above it). Its training crops also pass through
ColorJitter(brightness, contrast, saturation 0.4), which the library's preprocessing has
not (the default train_pp is used), and it decays every parameter where the library
decays kernels only (as for the other architectures here).

Settings (`--config configs/gcp_optimization.py:ARCH,SCHEDULE`) and the published top-1
(%). SPEC §3 gives numbers for LRnorm only; the ShuffleNetV2 ones are the release README's:

| setting | top-1 |
|---|---|
| resnet18,LRnorm | 75.48 |
| resnet34,LRnorm | 77.11 |
| resnet50,LRnorm | 78.56 |
| resnet101,LRnorm | 79.47 |
| mobilenet_v2,LRnorm | 74.39 |
| shufflenet_v2,LRnorm | 71.83 |
| shufflenet_v2,LRfast | 70.29 |
| shufflenet_v2,LRadju | 71.17 |
| ARCH,LRfast / ARCH,LRadju (the other ARCHs above) | no number in SPEC |

  python main.py --config configs/gcp_optimization.py:resnet50,LRfast \\
      --workdir runs/gcpopt_r50_fast --config.data.data_dir=/path/to/tensorflow_datasets
"""
from configs.imagenet import imagenet_data, parse_setting
from gcp.config import base_config

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2", "shufflenet_v2")
# schedule -> (epochs, schedule overrides)
SCHEDULES = {
    "LRnorm": (100, dict(schedule="step", decay_epochs=(30, 60, 90))),
    "LRfast": (30, dict(schedule="poly", poly_epochs=52.0, poly_power=11.0)),
    "LRadju": (50, dict(schedule="poly", poly_epochs=49.0, poly_power=2.0)),
}
# ShuffleNetV2 (main_shufflenet.py): schedule -> epochs of its linear decay.
SHUFFLENET_EPOCHS = {"LRnorm": 240, "LRfast": 60, "LRadju": 100}


def get_config(arg: str | None = None):
  arch, schedule = parse_setting(arg, "resnet50,LRnorm",
                                 [f"{a},{s}" for a in ARCHS for s in SCHEDULES])
  config = base_config()
  imagenet_data(config)
  config.model.arch, config.model.head = arch, "isqrt"
  config.model.reduction_dim = 256
  config.model.init_scheme = "torchvision"
  if arch == "shufflenet_v2":
    epochs = SHUFFLENET_EPOCHS[schedule]
    overrides = dict(schedule="poly", poly_epochs=float(epochs), poly_power=1.0)
    config.batch_size = 1024
    config.optim.learning_rate = 0.5
    config.optim.lr_reference_batch = 1024
    config.optim.weight_decay = 4e-5
  else:
    epochs, overrides = SCHEDULES[schedule]
    config.optim.learning_rate = 0.1
    config.optim.lr_reference_batch = 256
  config.num_epochs = epochs
  config.optim.update(overrides)
  config.optim.label_smoothing = 0.0
  config.log_every_steps = 500
  config.checkpoint_every_steps = 2000
  return config
