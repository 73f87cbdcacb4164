"""Model card: multiply-add counts against SPEC §2's torchvision-style figures."""
import pathlib

import pytest

from gcp import model_info
from gcp.models import create_model

README = pathlib.Path(__file__).parent.parent / "README.md"


@pytest.mark.parametrize("head, dim, published", [("gap", None, 4.1e9), ("isqrt", 128, 6.30e9)])
def test_resnet50_multiply_adds_within_2_percent(head, dim, published):
  model = create_model("resnet50", head=head, num_classes=1000, reduction_dim=dim,
                       isqrt_method="newton_schulz")
  assert abs(model_info.count_macs(model, 224) / published - 1) < 0.02


def test_head_costs_match_spec():
  # SPEC §2: reduction conv ~51 M, covariance ~3 M, Newton-Schulz ~25 M, FC ~8 M.
  gap = model_info.count_macs(create_model("resnet50", head="gap", num_classes=1000))
  gcp = model_info.count_macs(create_model("resnet50", head="isqrt", num_classes=1000,
                                           reduction_dim=128, isqrt_method="newton_schulz"))
  # The GCP model also runs layer4 at 14x14 instead of 7x7 (stride 1).
  layer4_extra = model_info.count_macs(create_model(
      "resnet50", head="cov", num_classes=1000, reduction_dim=128)) - gap
  head = gcp - gap - layer4_extra
  assert abs(head / 25.2e6 - 1) < 0.05  # 12 products of 128^3 = 25.2 M beyond the cov head


def test_card_row_and_table():
  entry = next(e for e in model_info.RELEASED if e[0] == "ResNet-18 iSQRT d=128")
  row = model_info.card_row(entry, with_xla=True)
  assert row["params"] == 19_499_304 and row["representation"] == 8_256
  assert 0.9 < row["XLA GMACs"] / row["GMACs"] <= 1.0  # XLA skips products with padding
  table = model_info.format_table([row])
  assert "| ResNet-18 iSQRT d=128 | 19,499,304 |" in table and "74.64" in table
  # The README shows today's row (XLA's count aside: it varies with the XLA flags).
  readme = next(r for r in readme_card() if r[0] == "ResNet-18 iSQRT d=128")
  ours = cells(table.splitlines()[-1])
  assert readme[:3] + readme[4:] == ours[:3] + ours[4:]


def cells(line: str) -> list[str]:
  return [cell.strip() for cell in line.strip("|").split("|")]


def readme_card(header: str = "| configuration | params | GMACs |") -> list[list[str]]:
  """The cells of the rows of the README's model card table that starts with `header`."""
  text = README.read_text()
  table = text[text.index(header):].split("\n\n")[0]
  return [cells(line) for line in table.splitlines()[2:]]


def test_readme_card_has_every_released_row_with_its_published_numbers():
  """The README's tables are `python -m gcp.model_info`'s: their rows in order, with the
  published columns as gcp.model_info states them (the computed columns of one row are
  compared above; regenerating the tables refreshes them all)."""
  rows = readme_card()
  assert [r[0] for r in rows] == [e[0] for e in model_info.RELEASED]
  for row, entry in zip(rows, model_info.RELEASED):
    assert row[5:] == list(entry[4:]), entry[0]
  rows = readme_card("| configuration | params | trained |")
  assert [r[0] for r in rows] == [e[0] for e in model_info.TRANSFORMERS]
  for row, entry in zip(rows, model_info.TRANSFORMERS):
    assert row[4:] == list(entry[4:7]), entry[0]


def test_transformer_rows_count_trained_parameters():
  """SPEC §4: MP head 4,047,146; PSRP 442,368 over 12 blocks; the papers' 3.65 M / 4.10 M
  omit the 768 x 512 + 512 projection; ViT-B/16 with a linear head is 86.57 M."""
  rows = {e[0]: model_info.transformer_row(e) for e in model_info.TRANSFORMERS
          if e[1] == "vit_b16"}  # the others' sizes: their model and conversion tests
  projection = 768 * 512 + 512
  assert rows["ViT-B/16 linear probe"]["trained"] == 768 * 1000 + 1000
  assert rows["ViT-B/16 MP"]["trained"] == 4_047_146
  assert rows["ViT-B/16 MP"]["trained"] - projection == 3_653_418          # "3.65M"
  assert rows["ViT-B/16 MP+"]["trained"] == 4_047_146 + 442_368
  assert rows["ViT-B/16 MP+"]["trained"] - projection == 4_095_786         # "4.10M"
  full = rows["ViT-B/16 full fine-tuning"]
  assert full["trained"] == full["params"] == 86_567_656                   # "86.57M"
  assert 17.0 < full["GMACs"] < 17.8  # ViT-B/16 at 224: 17.6 G multiply-adds (timm / fvcore)
  table = model_info.format_transformer_table(list(rows.values()))
  # The frozen backbone (86,567,656 - 769,000 classifier parameters) plus the MP head.
  assert "| ViT-B/16 MP | 89,845,802 | 4,047,146 |" in table and "83.15" in table
