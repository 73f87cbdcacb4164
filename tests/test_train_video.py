"""Video through the training loop: the synthetic moving-squares frame store, TSN segment
sampling, a video ResNet initialised from an image ResNet, training steps, and 2 clips x 3
crops evaluation of every video."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gcp import checkpoint, data, train
from gcp.config import base_config
from gcp.heads import GAPHead
from gcp.models import create_model, video
from gcp.models.resnet import Bottleneck, ResNet
from references.moving_squares import frame_store, moving_squares  # noqa: F401

TRAIN_PP = "random_segments(2)|inception_crop(32)|flip_lr|normalize('imagenet')"
EVAL_PP = "center_segments(2, clips=2)|resize_shorter(32)|three_crop(32)|normalize('imagenet')"


def test_frame_store_clips_train_and_every_view_is_scored(frame_store):  # noqa: F811
  """The library functions train_and_evaluate calls, on one device with a one-block-per-
  stage TSN (the full loop with AMS-Net is the slow test below)."""
  builder = data.load_builder(f"frames:{frame_store.root}")
  shape = data.image_shape(builder, "train", TRAIN_PP)
  assert shape == (2, 32, 32, 3)
  stages = (1, 1, 1, 1)
  # TSN (CPTM and CSTP compile for ~30 s more; tests/models/test_video.py checks them, and
  # tests/test_train_recipes.py the auxiliary loss).
  model = video.VideoResNet(stages, head=video.VideoGAPHead(), num_classes=2, width=4)
  mesh, tx = train.make_mesh(jax.devices()[:1]), optax.sgd(0.05, momentum=0.9)
  state = train.init_state(model, tx, shape, 0, mesh)
  image = ResNet(stages, Bottleneck, head=GAPHead(), num_classes=3, width=4)
  inflated, _ = checkpoint.inflate_image_variables(
      jax.jit(image.init)(jax.random.key(1), jnp.zeros((1, 32, 32, 3))),
      {"params": state.params, **state.model_state})
  state = state.replace(params=inflated.pop("params"), model_state=inflated)
  step = train.make_train_step(model, tx, 0.1)
  for batch in data.train_batches(builder, split="train", pp=TRAIN_PP, per_host_batch=4,
                                  seed=0, epoch=0, shuffle_buffer=8):
    assert batch["image"].shape == (4, *shape)
    state, metrics = step(state, train.shard_batch(batch, mesh))
    assert bool(metrics["finite"])
  assert int(state.step) == 2  # 8 training videos
  batches = list(data.eval_batches(builder, split="val", pp=EVAL_PP, per_host_batch=4))
  assert batches[0]["image"].shape == (4, 6, *shape)  # 2 clips x 3 crops
  result = train.evaluate(train.make_eval_step(model), state, batches, mesh)
  assert result["eval_examples"] == 5 and np.isfinite(result["eval_loss"])


# ~1-3 min of compiling a ResNet-50 video network for 8 devices; the test above covers the
# same path with a smaller network, init_from and checkpoints are the image models' code.
@pytest.mark.slow
def test_ams_net_trains_from_an_image_checkpoint_and_scores_every_view(frame_store,  # noqa: F811
                                                                        tmp_path):
  image_model = dict(arch="resnet50", head="gap", num_classes=3, width=4)
  image_vars = create_model(**image_model).init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
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
  np.testing.assert_array_equal(params["layer3_5"]["conv2"]["kernel"],
                                image_vars["params"]["layer3_5"]["conv2"]["kernel"])
  assert {"cptm1", "cptm3", "head", "aux_head", "fc"} <= set(params)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  assert all(np.all(np.isfinite(v)) for v in flat.values())
