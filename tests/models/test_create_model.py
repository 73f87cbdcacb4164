"""create_model: option routing and errors that list the valid names."""
import pytest

from gcp.heads import GAPHead, ISQRTHead, MPMapHead, MPPlusHead
from gcp.models import create_model


def test_head_options_reach_the_head():
  model = create_model("resnet50", head="isqrt", num_classes=5, reduction_dim=64, num_iters=3)
  assert isinstance(model.head, ISQRTHead)
  assert (model.head.reduction_dim, model.head.num_iters) == (64, 3)


def test_options_of_other_heads_are_ignored():
  # One config serves every head: num_iters and reduction_dim mean nothing to GAP.
  model = create_model("resnet18", head="gap", num_classes=5, reduction_dim=64, num_iters=3)
  assert isinstance(model.head, GAPHead)


@pytest.mark.parametrize("kwargs, match", [
    (dict(arch="resnet19"), r"unknown arch 'resnet19'; valid archs: resnet18, resnet34"),
    (dict(head="isqrtt"),
     r"unknown head 'isqrtt'; valid heads: gap, cov, isqrt, eig, bcnn, cbp, dropcov"),
    (dict(dtype="float8"), r"unknown dtype 'float8'; valid dtypes: float32"),
    (dict(num_classes=0), r"num_classes must be a positive integer"),
    (dict(num_iter=5), r"unknown model option\(s\) \['num_iter'\]; valid options: .*num_iters"),
])
def test_bad_arguments_name_the_problem(kwargs, match):
  args = dict(arch="resnet18", head="isqrt", num_classes=10) | kwargs
  with pytest.raises(ValueError, match=match):
    create_model(**args)


def test_swin_and_convnext_take_the_heads_that_hold_their_classifier():
  swin = create_model("swin_b", head="mp_plus", num_classes=5, proj_dim=64, depths=(1, 1, 2, 1),
                      reduction_dim=8, num_iters=3)  # CNN-head options mean nothing here
  assert isinstance(swin.head, MPPlusHead) and swin.head.proj_dim == 64
  assert swin.depths == (1, 1, 2, 1)
  convnext = create_model("convnext_b", head="mp", num_classes=5, dims=(8, 16, 32, 64))
  assert isinstance(convnext.head, MPMapHead) and convnext.dims == (8, 16, 32, 64)
  with pytest.raises(ValueError, match=r"unknown head 'isqrt'; valid heads: linear, mp, "
                                       r"mp_plus$"):
    create_model("convnext_b", head="isqrt", num_classes=5)
  with pytest.raises(ValueError, match=r"unknown head 'dropcov'; valid heads: linear, mp, "
                                       r"mp_plus$"):
    create_model("convnext_b", head="dropcov", num_classes=5)
