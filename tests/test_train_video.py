"""A video model through train_and_evaluate: the synthetic moving-squares frame store,
TSN segment sampling, AMS-Net (CPTM + CSTP with its auxiliary loss) initialised from an
image ResNet-50 checkpoint, and 2 clips x 3 crops evaluation."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import checkpoint, train
from gcp.config import base_config
from gcp.models import create_model
from references.moving_squares import frame_store, moving_squares  # noqa: F401


# ~1-3 min of compiling a ResNet-50 video network for 8 devices. Its parts run by default:
# the frame store, sampling and views (tests/data/test_video.py), the models, auxiliary
# head and inflation (tests/models/test_video.py), the auxiliary loss, multi-view clip
# evaluation and gradient clipping (tests/test_train_recipes.py).
@pytest.mark.slow
def test_ams_net_trains_from_an_image_checkpoint_and_scores_every_view(frame_store,  # noqa: F811
                                                                        tmp_path):
  image_model = dict(arch="resnet50", head="gap", num_classes=3, width=4)
  image_vars = create_model(**image_model).init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  checkpoint.save_variables(str(tmp_path / "image"), image_vars, image_model)

  c = base_config()
  c.data.name = f"frames:{frame_store.root}"
  c.data.train_split, c.data.eval_split = "train", "val"
  c.data.train_pp = "random_segments(2)|inception_crop(32)|flip_lr|normalize('imagenet')"
  c.data.eval_pp = ("center_segments(2, clips=2)|resize_shorter(32)|three_crop(32)|"
                    "normalize('imagenet')")
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
