"""AMS-Net (TNNLS 2023; SPEC §5): a TSN ResNet-50 with CPTM blocks after layer1 and layer3
and the CSTP neck on res4 / res5 (auxiliary head, loss weight 0.5, in training only), for
action recognition; and TCPNet's second-order temporal pooling on the same backbone.

Recipe (SPEC §5, Something-Something V1): SGD Nesterov, lr 0.012 for 56 clips (linear
scaling), momentum 0.9, wd 5e-4, gradient clipping at global norm 20, x0.1 at epochs 75
and 95, 110 epochs; T segments, random-resized crop 224 + flip identical over a clip;
test 2 clips x 3 crops at 256 (the published multi-view numbers; single view: the
`center_segments(T)|resize_shorter(256)|center_crop(224)` string). The backbone starts
from an ImageNet ResNet-50 checkpoint (`config.init_from`: ours, or a converted
torchvision / release file): its conv1 is repeated over the snippet channels for
AMS-Net*. SSv2 / Kinetics / Diving48 use the same recipe here (SPEC gives only SSv1's).

Settings (`--config configs/ams_net.py:DATASET,FRAMES,MODEL`) and the published top-1 (%,
2 clips x 3 crops; single-crop in brackets):

| setting | top-1 |
|---|---|
| ssv1,8,ams | 53.2 (50.4) |
| ssv1,16,ams | 54.2 (52.4) |
| ssv2,8,ams | 65.3 (62.4) |
| ssv2,16,ams | 66.0 (64.1) |
| kinetics400,8,ams | 77.1 |
| diving48,16,ams | none published in SPEC |
| ssv1,8,ams_star | none published in SPEC (AMS-Net*: 3-frame snippets) |
| kinetics400,8,tcp | 75.3 (72.4), TCPNet TSN-R50, 30 views |

  python main.py --config configs/ams_net.py:ssv1,8,ams --workdir runs/ams_ssv1_8f \\
      --config.init_from=runs/r50_gap --config.data.name=frames:/data/something/v1

Data: a frame store (`gcp.data.video`): SSv1 ships as JPEG frames (its folder, plus
`category.txt` and `{train,val}_videofolder.txt` in TSM's format); SSv2, Kinetics and
Diving48 are decoded once into the same layout:

  python -m gcp.data.video decode VIDEOS_DIR LIST_FILE OUT_ROOT --split train
"""
from configs.imagenet import parse_setting
from gcp.config import base_config

NORMALIZE = "normalize('imagenet')"
# name -> (frame store, train split, eval split, number of classes)
DATASETS = {
    "ssv1": ("frames:/path/to/something/v1", "train", "val", 174),
    "ssv2": ("frames:/path/to/something/v2", "train", "val", 174),
    "kinetics400": ("frames:/path/to/kinetics400", "train", "val", 400),
    "diving48": ("frames:/path/to/diving48", "train", "test", 48),
}
SETTINGS = ["ssv1,8,ams", "ssv1,16,ams", "ssv2,8,ams", "ssv2,16,ams", "kinetics400,8,ams",
            "diving48,16,ams", "ssv1,8,ams_star", "kinetics400,8,tcp"]


def get_config(arg: str | None = None):
  dataset, frames, model = parse_setting(arg, "ssv1,8,ams", SETTINGS)
  frames, snippet = int(frames), 3 if model == "ams_star" else 1
  config = base_config()
  (config.data.name, config.data.train_split, config.data.eval_split,
   config.model.num_classes) = DATASETS[dataset]
  config.data.train_pp = (f"random_segments({frames}, snippet_frames={snippet})|"
                          f"inception_crop(224)|flip_lr|{NORMALIZE}")
  config.data.eval_pp = (f"center_segments({frames}, snippet_frames={snippet}, clips=2)|"
                         f"resize_shorter(256)|three_crop(256)|{NORMALIZE}")
  config.data.shuffle_buffer = 2_048
  config.model.arch = "tsn_resnet50"
  config.model.variant, config.model.init_scheme = "pytorch", "torchvision"
  if model == "tcp":
    config.model.head, config.model.num_iters = "tcp", 3
  else:
    config.model.head, config.model.cptm, config.model.snippet_frames = "cstp", True, snippet

  o = config.optim
  o.learning_rate, o.lr_reference_batch = 0.012, 56
  o.momentum, o.nesterov, o.weight_decay = 0.9, True, 5e-4
  o.grad_clip_norm = 20.0
  o.schedule, o.decay_epochs, o.decay_factor = "step", (75, 95), 0.1
  o.label_smoothing = 0.0
  o.aux_loss_weight = 0.5
  config.batch_size, config.eval_batch_size = 56, 8
  config.num_epochs = 110
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  return config
