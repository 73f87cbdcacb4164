"""Video through the training loop: the synthetic moving-squares frame store, TSN segment
sampling, AMS-Net initialised from an image ResNet's checkpoint, training steps, and 2 clips
x 3 crops evaluation of every video."""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from gcp import checkpoint, data, models, train
from gcp.config import base_config
from gcp.models import create_model
from references.moving_squares import frame_store, moving_squares  # noqa: F401

TRAIN_PP = "random_segments(2)|inception_crop(32)|flip_lr|normalize('imagenet')"
EVAL_PP = "center_segments(2, clips=2)|resize_shorter(32)|three_crop(32)|normalize('imagenet')"


def test_ams_net_trains_from_an_image_checkpoint_and_scores_every_view(frame_store,  # noqa: F811
                                                                        tmp_path, monkeypatch):
  """main.py's loop: AMS-Net (CPTM, CSTP, the auxiliary head) initialised from an image
  ResNet's checkpoint, trained and scored on every view. ResNet-50's depth compiles for
  ~1.5 min here: both the image and the video ResNet-50 have one block per stage."""
  for name, (build, init) in [("resnet50", models._BACKBONES["resnet50"]),
                              ("tsn_resnet50", models._BACKBONES["tsn_resnet50"])]:
    monkeypatch.setitem(models._BACKBONES, name,
                        (functools.partial(build, stage_sizes=(1, 1, 1, 1)), init))
  builder = data.load_builder(f"frames:{frame_store.root}")
  shape = data.image_shape(builder, "train", TRAIN_PP)
  assert shape == (2, 32, 32, 3)  # 2 segments of 32 x 32 frames
  train_batches = list(data.train_batches(builder, split="train", pp=TRAIN_PP,
                                          per_host_batch=8, seed=0, epoch=0))
  assert [b["image"].shape for b in train_batches] == [(8, *shape)]  # 8 training videos
  eval_batch = next(data.eval_batches(builder, split="val", pp=EVAL_PP, per_host_batch=8))
  assert eval_batch["image"].shape == (8, 6, *shape)  # 2 clips x 3 crops

  image_model = dict(arch="resnet50", head="gap", num_classes=3, width=4)
  image_vars = jax.jit(create_model(**image_model).init)(jax.random.key(1, impl="rbg"),
                                                         jnp.zeros((1, 32, 32, 3)))
  checkpoint.save_variables(str(tmp_path / "image"), image_vars, image_model)

  c = base_config()
  c.data.name = f"frames:{frame_store.root}"
  c.data.train_split, c.data.eval_split = "train", "val"
  c.data.train_pp, c.data.eval_pp = TRAIN_PP, EVAL_PP
  c.model.arch, c.model.head, c.model.cptm, c.model.width = "tsn_resnet50", "cstp", True, 4
  c.model.init_scheme = "torchvision"
  c.init_from = str(tmp_path / "image")
  # lr 0: the trained backbone must still be the image model's, views and all.
  c.optim.learning_rate, c.optim.grad_clip_norm, c.optim.nesterov = 0.0, 20.0, True
  c.batch_size, c.eval_batch_size, c.num_epochs, c.log_every_steps = 8, 8, 1, 1
  result = train.train_and_evaluate(c, str(tmp_path / "run"))

  assert result["eval_examples"] == 5 and np.isfinite(result["train_loss"])
  params = checkpoint.load_variables(str(tmp_path / "run"))["params"]
  np.testing.assert_array_equal(params["layer3_0"]["conv2"]["kernel"],
                                image_vars["params"]["layer3_0"]["conv2"]["kernel"])
  assert {"cptm1", "cptm3", "head", "aux_head", "fc"} <= set(params)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  assert all(np.all(np.isfinite(v)) for v in flat.values())
