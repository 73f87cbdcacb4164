"""gcp.pretrained: the registry against the releases' networks, and download, checks, cache,
import and `pretrained:NAME` against a local HTTP server (no test reaches the internet).

The served checkpoint is a tiny fast-MPN-COV-style file: a bare MPNCOVResNet state_dict of
the tiny ResNet-18 tests/test_train.py trains, so the fine-tuning run reuses its compiled
steps. Google Drive's confirmation page is served locally to gdown (its requests to Drive's
hosts are sent to the local server).
"""
import hashlib
import http.server
import importlib
import json
import os
import re
import sys
import threading
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gcp.convert
from gcp import checkpoint, pretrained, train
from gcp.convert import mindspore, pytorch
from gcp.convert.torch_layout import to_torch
from gcp.pretrained import __main__ as cli
from gcp.pretrained import fetch, registry

from test_train import tiny_config
from references.variables import random_variables

# The model tests/test_train.py's tiny_config trains (10 classes).
TINY_SPEC = {"arch": "resnet18", "head": "isqrt", "width": 4, "small_input": True,
             "reduction_dim": 8, "num_classes": 10}
DRIVE_ID = "1TinyFileIdForTests_abcdefghijk"
QUOTA_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
    '<div class="uc-main"><p class="uc-error-caption">Sorry, you can&#39;t view or download '
    'this file at this time.</p><p class="uc-error-subcaption">Too many users have viewed or '
    "downloaded this file recently. Please try accessing the file again later.</p></div>"
    "</body></html>\n")
# Drive's "can't scan for viruses" page, one line as Drive sends it: a form that confirms.
CONFIRM_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
    '<p class="uc-warning-caption">Google Drive can\'t scan this file for viruses.</p>'
    '<form id="download-form" action="https://drive.usercontent.google.com/download" '
    'method="get"><input type="submit" id="uc-download-link" value="Download anyway"/>'
    f'<input type="hidden" name="id" value="{DRIVE_ID}"><input type="hidden" name="export" '
    'value="download"><input type="hidden" name="confirm" value="t"><input type="hidden" '
    'name="uuid" value="0a1b2c3d"></form></body></html>\n')


# ------------------------------------------------------------------------ local server

class Server(http.server.ThreadingHTTPServer):
  """Serves `routes[path]` (bytes, or a callable of the handler) on 127.0.0.1, honouring
  Range requests; paths in `cut_once` send half their bytes the first time, then close.
  Requests to Google Drive's hosts arrive as /<host>/<path> (see `drive`). `log` holds
  (path, Range header) per request."""

  def __init__(self):
    super().__init__(("127.0.0.1", 0), Handler)
    self.routes, self.cut_once, self.log = {}, set(), []
    self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
  def log_message(self, *args):
    pass

  def do_GET(self):
    path, _, query = self.path.partition("?")
    self.server.log.append((path, self.headers.get("Range")))
    route = self.server.routes.get(path)
    if route is None:
      self.send_error(404)
    elif callable(route):
      route(self, urllib.parse.parse_qs(query))
    else:
      self.send_bytes(route, cut=path in self.server.cut_once)
      self.server.cut_once.discard(path)

  def send_bytes(self, data: bytes, cut=False, content_type="application/octet-stream",
                 headers=()):
    start = int(re.match(r"bytes=(\d+)-", self.headers.get("Range") or "bytes=0-").group(1))
    self.send_response(206 if start else 200)
    if start:
      self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    self.send_header("Content-Length", str(len(data) - start))
    self.send_header("Content-Type", content_type)
    for header in headers:
      self.send_header(*header)
    self.end_headers()
    body = data[start:]
    self.wfile.write(body[:len(body) // 2] if cut else body)


@pytest.fixture
def server():
  s = Server()
  thread = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  yield s
  s.shutdown()
  s.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
  root = tmp_path / "cache"
  monkeypatch.setenv(pretrained.CACHE_ENV, str(root))
  monkeypatch.delenv(pretrained.OFFLINE_ENV, raising=False)
  return root / "pretrained"


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
  """(path, bytes, variables) of the tiny model saved as fast-MPN-COV saves a model."""
  pytest.importorskip("torch", reason="the release's file is written with torch")
  variables = random_variables(TINY_SPEC)
  path = str(tmp_path_factory.mktemp("release") / "mpncovresnet18_tiny.pth")
  pytorch.write(path, to_torch(variables))
  with open(path, "rb") as f:
    return path, f.read(), variables


def add_entry(monkeypatch, name, url, **fields):
  """Registers a test entry for the tiny model (fast-MPN-COV's PyTorch format)."""
  params = sum(x.size for x in jax.tree.leaves(random_variables(TINY_SPEC)["params"]))
  entry = registry.Entry(name, ("fast-mpn-cov",), "tiny ResNet-18 iSQRT", TINY_SPEC, params,
                         0.0, (url,), **fields)
  monkeypatch.setitem(pretrained.REGISTRY, name, entry)
  return entry


def entry_files(cache, name):
  folder = cache.joinpath(*name.split("/"))
  return sorted(os.listdir(folder)) if folder.exists() else []


# ------------------------------------------------------------------------ download, cache

def test_download_checks_converts_and_loads_offline(server, cache, tiny_file, monkeypatch):
  _, data, variables = tiny_file
  server.routes["/tiny.pth"] = data
  add_entry(monkeypatch, "test/tiny", server.url + "/tiny.pth")
  assert cli.main(["download", "test/tiny"]) == 0
  assert entry_files(cache, "test/tiny") == ["converted", "record.json", "tiny.pth"]
  record = json.loads((cache / "test/tiny/record.json").read_text())
  assert record["sha256"] == hashlib.sha256(data).hexdigest()
  assert record["origin"] == server.url + "/tiny.pth"
  # Offline: the cache alone serves the model, through load() and pretrained:NAME.
  requests = len(server.log)
  monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
  model, loaded = pretrained.load("test/tiny")
  assert checkpoint.load_model_spec("pretrained:test/tiny") == registry.expected_spec(
      pretrained.REGISTRY["test/tiny"])
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), loaded,
                          jnp.zeros((2, 16, 16, 3)))
  assert logits.shape == (2, 10)
  assert len(server.log) == requests


def test_offline_miss_names_the_command_and_the_links(cache, monkeypatch):
  monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
  entry = pretrained.REGISTRY["fast-mpn-cov/resnet50"]
  with pytest.raises(pretrained.PretrainedError) as e:
    checkpoint.load_variables("pretrained:fast-mpn-cov/resnet50")
  message = str(e.value)
  assert "python -m gcp.pretrained download fast-mpn-cov/resnet50" in message
  assert "python -m gcp.pretrained import fast-mpn-cov/resnet50 FILE" in message
  assert all(url in message for url in entry.urls + entry.mirrors)
  with pytest.raises(pretrained.PretrainedError, match="did you mean fast-mpn-cov/resnet50"):
    pretrained.load("fast-mpn-cov/resnet5")


def test_cut_connection_resumes(server, cache, tiny_file, monkeypatch):
  _, data, _ = tiny_file
  server.routes["/tiny.pth"] = data
  server.cut_once.add("/tiny.pth")
  add_entry(monkeypatch, "test/tiny", server.url + "/tiny.pth")
  with pytest.raises(pretrained.PretrainedError, match="the same command resumes it"):
    pretrained.checkpoint_dir("test/tiny")
  assert entry_files(cache, "test/tiny") == ["tiny.pth.download.partial"]
  received = os.path.getsize(cache / "test/tiny/tiny.pth.download.partial")
  assert 0 < received < len(data)
  pretrained.checkpoint_dir("test/tiny")
  assert server.log[-1] == ("/tiny.pth", f"bytes={received}-")
  assert (cache / "test/tiny/tiny.pth").read_bytes() == data
  assert entry_files(cache, "test/tiny") == ["converted", "record.json", "tiny.pth"]


def test_error_pages_and_bad_files_are_rejected_and_not_kept(server, cache, tiny_file,
                                                               monkeypatch):
  _, data, _ = tiny_file
  server.routes["/quota"] = lambda h, q: h.send_bytes(QUOTA_PAGE.encode(),
                                                      content_type="text/html")
  server.routes["/truncated.pth"] = data[:len(data) * 2 // 3]  # complete response, cut file
  add_entry(monkeypatch, "test/quota", server.url + "/quota")
  with pytest.raises(pretrained.PretrainedError) as e:
    pretrained.checkpoint_dir("test/quota")
  assert ("sent an HTML page of" in str(e.value) and
          "titled 'Google Drive - Quota exceeded'" in str(e.value) and
          "Too many users have viewed or downloaded this file recently" in str(e.value))
  assert not (cache / "test/quota").exists()
  add_entry(monkeypatch, "test/truncated", server.url + "/truncated.pth")
  with pytest.raises(pretrained.PretrainedError, match="does not convert.*truncated or corrupt"
                     "(.|\n)*The file was not kept"):
    pretrained.checkpoint_dir("test/truncated")
  assert not (cache / "test/truncated").exists()
  add_entry(monkeypatch, "test/sized", server.url + "/tiny.pth", size_mib=1.0)
  server.routes["/tiny.pth"] = data
  with pytest.raises(pretrained.PretrainedError, match=r"MiB\), where jiangtaoxie/fast-MPN-COV "
                     "gives 1.0 MiB"):
    pretrained.checkpoint_dir("test/sized")
  assert not (cache / "test/sized").exists()


def test_import_checks_the_file_against_the_entry(cache, tiny_file, tmp_path, monkeypatch,
                                                  capsys):
  path, data, _ = tiny_file
  add_entry(monkeypatch, "test/tiny", "https://pan.baidu.com/s/unreachable")
  page = tmp_path / "download.pth"
  page.write_text(QUOTA_PAGE)
  with pytest.raises(pretrained.PretrainedError, match="is an HTML page.*Nothing was cached"):
    pretrained.import_file("test/tiny", str(page))
  other = tmp_path / "other.pth"  # a well-formed checkpoint of another model
  pytorch.write(str(other), to_torch(random_variables({**TINY_SPEC, "reduction_dim": 16})))
  with pytest.raises(pretrained.PretrainedError, match=r"another model(.|\n)*reduction_dim: 8 "
                     "in the registry, 16 in the file(.|\n)*not kept"):
    pretrained.import_file("test/tiny", str(other))
  assert not (cache / "test/tiny").exists()
  assert cli.main(["import", "test/tiny", path]) == 0
  assert "--config.init_from=pretrained:test/tiny" in capsys.readouterr().out
  assert json.loads((cache / "test/tiny/record.json").read_text())["origin"] == path
  assert (cache / "test/tiny/tiny.pth").read_bytes() == data


def test_conversion_is_redone_when_its_code_changes_and_hash_changes_warn(
    server, cache, tiny_file, monkeypatch, capsys):
  _, data, _ = tiny_file
  server.routes["/tiny.pth"] = data
  add_entry(monkeypatch, "test/tiny", server.url + "/tiny.pth")
  pretrained.checkpoint_dir("test/tiny")
  stamp = cache / "test/tiny/converted/conversion.json"
  requests = len(server.log)
  monkeypatch.setattr(pretrained, "conversion_fingerprint", lambda: "changed")
  pretrained.checkpoint_dir("test/tiny")
  assert json.loads(stamp.read_text())["fingerprint"] == "changed"
  assert len(server.log) == requests  # converted again from the cached file
  assert "the conversion code changed" in capsys.readouterr().out
  record = cache / "test/tiny/record.json"
  record.write_text(json.dumps({**json.loads(record.read_text()), "sha256": "0" * 64}))
  pretrained.checkpoint_dir("test/tiny", force=True)
  assert "the release may have replaced it" in capsys.readouterr().err
  assert json.loads(record.read_text())["sha256"] == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------ Google Drive

@pytest.fixture
def drive(server, monkeypatch, tmp_path):
  """Routes requests for Google Drive's hosts to `server` (as /<host>/<path>), and gdown's
  cookie file to tmp_path."""
  pytest.importorskip("gdown", reason="Google Drive downloads need gdown (test extra)")
  requests = pytest.importorskip("requests")
  gdown = importlib.import_module("gdown.download")
  monkeypatch.setattr(gdown, "DEFAULT_COOKIES_FILE", str(tmp_path / "cookies.txt"),
                      raising=False)
  monkeypatch.setattr(gdown, "home", str(tmp_path), raising=False)
  send = requests.adapters.HTTPAdapter.send

  def local(self, request, *args, **kwargs):
    parts = urllib.parse.urlsplit(request.url)
    if parts.hostname in ("drive.google.com", "drive.usercontent.google.com"):
      request.url = f"{server.url}/{parts.hostname}{parts.path}?{parts.query}"
    return send(self, request, *args, **kwargs)
  monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", local)
  return server


def test_drive_confirmation_page_is_followed(drive, cache, tiny_file, monkeypatch):
  _, data, _ = tiny_file

  def download(handler, query):
    assert query["confirm"] == ["t"] and query["id"] == [DRIVE_ID]
    handler.send_bytes(data, headers=[("Content-Disposition",
                                       'attachment; filename="mpncovresnet18.pth"')])
  drive.routes["/drive.google.com/uc"] = lambda h, q: h.send_bytes(
      CONFIRM_PAGE.encode(), content_type="text/html; charset=utf-8")
  drive.routes["/drive.usercontent.google.com/download"] = download
  add_entry(monkeypatch, "test/drive", f"https://drive.google.com/file/d/{DRIVE_ID}/view"
            "?usp=sharing")
  pretrained.checkpoint_dir("test/drive")
  assert (cache / "test/drive/drive.pth").read_bytes() == data
  assert [p for p, _ in drive.log] == ["/drive.google.com/uc",
                                       "/drive.usercontent.google.com/download"]


def test_drive_quota_page_and_missing_gdown_are_explained(drive, cache, monkeypatch):
  drive.routes["/drive.google.com/uc"] = lambda h, q: h.send_bytes(
      QUOTA_PAGE.encode(), content_type="text/html; charset=utf-8")
  add_entry(monkeypatch, "test/drive", f"https://drive.google.com/open?id={DRIVE_ID}")
  with pytest.raises(pretrained.PretrainedError, match="Google Drive did not serve .*Too many "
                     "users have viewed or downloaded this file recently"):
    pretrained.checkpoint_dir("test/drive")
  assert not (cache / "test/drive").exists()
  monkeypatch.setitem(sys.modules, "gdown", None)
  with pytest.raises(pretrained.PretrainedError, match=r"needs gdown.*pip install "
                     r"'gcp\[pretrained\]'"):
    pretrained.checkpoint_dir("test/drive")


# ------------------------------------------------------------------------ pretrained:NAME

def test_fine_tuning_and_evaluation_from_a_pretrained_name(server, cache, tiny_file, data_dir,
                                                           tmp_path, monkeypatch):
  _, data, variables = tiny_file
  server.routes["/tiny.pth"] = data
  add_entry(monkeypatch, "test/tiny", server.url + "/tiny.pth")
  # test_train.py's fine-tuning config, so that its compiled steps are reused.
  config = tiny_config(data_dir, init_from="pretrained:test/tiny", num_epochs=1,
                       **{"optim.learning_rate": 0.0, "optim.momentum": 0.0,
                          "optim.weight_decay": 0.0})
  tuned = train.train_and_evaluate(config, str(tmp_path / "tuned"))
  assert tuned["step"] == 4
  # With a zero learning rate only BatchNorm statistics move: the loaded weights stay.
  jax.tree.map(np.testing.assert_array_equal, variables["params"],
               checkpoint.load_variables(str(tmp_path / "tuned"))["params"])
  scored = train.evaluate_checkpoint(config, str(tmp_path / "eval"))
  assert scored["step"] == 0 and scored["eval_examples"] == 100


def test_unregistered_source_says_what_to_import(monkeypatch):
  monkeypatch.setattr(checkpoint, "_SOURCES", {})
  with pytest.raises(FileNotFoundError, match="pretrained:NAME needs `import gcp.pretrained`"):
    checkpoint.load_model_spec("pretrained:fast-mpn-cov/resnet50")


# ------------------------------------------------------------------------ the registry

def release_network(entry, num_classes=None):
  """`(release network, format)` of a registry entry: the PyTorch port (tests/references,
  on torch's meta device) of the network its release's code builds, with the sizes that
  code fixes, and the file format."""
  import torch
  from references import torch_dropcov_vit, torch_mp, torch_resnet, torch_shufflenet, torch_vgg
  release, model = entry.name.split("/")
  arch = model.split("_")[0]
  with torch.device("meta"):
    if release == "gcp-opt":  # src/resnet.py of the seeds: reduction 128, class_num 1001
      head = "isqrt" if model.endswith("fast_mpn") else "dropcov"
      return torch_resnet.ResNet(arch, head, 128, num_classes or 1001, "mindspore"), "mindspore"
    if release == "fast-mpn-cov":  # mpncovvgg16_bn; mpncovresnet50 / 101 (MPNCOV(256))
      return (torch_vgg.Network("vgg16_bn") if arch == "vgg16" else
              torch_resnet.ResNet(arch, "isqrt", 256)), "pytorch"
    if release == "gcp-optimization":  # *_MPNCOV(_128).py for GCP, torchvision's for GAP
      head, dim = ("isqrt" if "_GCP_" in entry.description else "gap",
                   128 if entry.description.endswith("_128") else 256)
      if arch == "shufflenetv2":
        return torch_shufflenet.ShuffleNetV2(head, dim, 1000, 1.0), "pytorch"
      return (torch_resnet.MobileNetV2(head, dim) if arch == "mobilenetv2" else
              torch_resnet.ResNet(arch, head, dim)), "pytorch"
    if release == "dropcov" and arch.startswith("resnet"):  # ResNet_ACD: reduction 256
      return torch_resnet.ResNet(arch, "dropcov", 256), "pytorch"
    if model == "deit_s16":  # timm's deit_small_patch16_224
      return torch_mp.VisionTransformer(dim=384, num_heads=6, mlp_dim=1536), "pytorch"
    if release == "mp":
      return torch_mp.VisionTransformer(
          tuning_mode="psrp" if model.endswith("mp_plus") else "",
          probing_mode="mp" if model.endswith(("_mp", "mp_plus")) else "cls_token"), "pytorch"
  if model == "deit_s16_dropcov":  # on the CPU: its position embedding is a fixed table
    return torch_dropcov_vit.DeitDrop(), "pytorch"
  if model == "t2t_vit_14_dropcov":
    return torch_dropcov_vit.DeitDrop(**torch_dropcov_vit.RELEASES["T2T_ViT_14"]), "pytorch"
  raise KeyError(f"no release network for {entry.name}")


def stand_in(net) -> dict[str, np.ndarray]:
  """The network's state_dict with zero-stride zeros for the tensors on the meta device."""
  return {name: (np.broadcast_to(np.float32(0), tuple(t.shape)) if t.is_meta else
                 t.detach().numpy())
          for name, t in net.state_dict().items() if not name.endswith("num_batches_tracked")}


def test_registry_is_consistent():
  assert len(pretrained.ENTRIES) == len(pretrained.REGISTRY)  # unique names
  for e in pretrained.ENTRIES:
    assert registry.NAME.match(e.name) and e.name.split("/")[0] in e.releases, e.name
    assert all(r in pretrained.RELEASES for r in e.releases), e.name
    assert any(fetch.is_automatic(u) for u in e.urls), e.name
    assert all(fetch.drive_id(u) for u in e.urls if fetch.is_drive(u)), e.name


# Small entries convert from files written as their releases write them (zero weights);
# the others from their tensors handed to gcp.convert's readers.
WRITTEN = ("gcp-opt/resnet18_fast_mpn", "gcp-optimization/mobilenetv2_gap_lrnorm")


def write_release_file(path, tensors, fmt):
  """A MindSpore seed's .ckpt, or GCP_Optimization's main.py checkpoint of a DataParallel
  model (save_checkpoint: epoch, arch, state_dict with `module.`, best_acc1, optimizer)."""
  if fmt == "mindspore":
    mindspore.write(str(path), mindspore.release_names(tensors))
    return
  import torch
  state = {f"module.{name}": torch.from_numpy(np.ascontiguousarray(value))
           for name, value in tensors.items()}
  torch.save({"epoch": 150, "arch": "mobilenet_v2", "state_dict": state, "best_acc1": 71.62,
              "optimizer": {"state": {}, "param_groups": []}}, str(path))


def test_every_spec_is_what_gcp_convert_reads_off_its_release_network(tmp_path, monkeypatch):
  """Each entry's release network through gcp.convert gives the entry's spec, a model with
  the entry's parameter count, which is the release network's; the README's file sizes are
  those networks' float32 weights."""
  pytest.importorskip("torch", reason="the releases' networks are PyTorch ports")
  done = {}
  for e in pretrained.ENTRIES:
    net, fmt = release_network(e)
    # The MindSpore seeds' classifier has a 1001st class, which conversion cuts.
    count = release_network(e, num_classes=1000)[0] if fmt == "mindspore" else net
    assert e.params == sum(p.numel() for p in count.parameters() if p.requires_grad), e.name
    if e.size_mib:
      weights = sum(t.size for t in stand_in(net).values()) * 4 / 2**20
      assert abs(weights / e.size_mib - 1) < 1e-3, (e.name, weights)
    key = (type(net).__name__, fmt, json.dumps(registry.expected_spec(e), sort_keys=True))
    if key not in done:  # entries differing in training recipe only share their network
      tensors, path = stand_in(net), tmp_path / e.filename
      with monkeypatch.context() as patch:
        if e.name in WRITTEN:
          write_release_file(path, tensors, fmt)
        else:
          patch.setattr(pytorch, "read", lambda path, weights=None, t=tensors: (t, None))
          patch.setattr(mindspore, "read", lambda path, t=tensors: mindspore.release_names(t))
          path.touch()
        spec, variables = gcp.convert.convert(str(path))
      path.unlink()
      done[key] = spec, sum(x.size for x in jax.tree.leaves(variables["params"]))
    spec, params = done[key]
    assert pretrained._spec_differences(e, spec) == [], e.name
    assert params == e.params, e.name
  assert all(name in pretrained.REGISTRY for name in WRITTEN)


def test_readme_lists_the_registry():
  with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
    readme = f.read()
  table = re.search(r"\n(\| name \| model \|.*?)\n\n", readme, re.DOTALL)
  assert table and table.group(1) == cli.format_list(), (
      "README.md's pretrained table is stale: paste `python -m gcp.pretrained list`")
