"""Getting a file from a URL into a path: plain HTTP(S) with a progress bar and resumption
of a partial download, Google Drive through `gdown` (its confirmation pages), and a look at
the first bytes that tells a checkpoint from what servers send instead (Drive's quota and
error pages).

Nothing here knows the registry: `gcp.pretrained` decides what to fetch and checks it.
"""
import html
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request

import tqdm

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without a byte before a connection counts as lost
_DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")
_DRIVE_ID = re.compile(r"/file/d/([\w-]+)|[?&]id=([\w-]+)")
# What a file of each gcp.convert format starts with: a PyTorch zip archive (torch >= 1.6)
# or a pickle (older torch.save), a MindSpore protobuf's first field (tag 1, bytes).
_MAGIC = {"pytorch": (b"PK\x03\x04", b"\x80"), "mindspore": (b"\x0a",), "vit_npz": (b"PK",)}
_FORMAT_NAMES = {"pytorch": "PyTorch checkpoint", "mindspore": "MindSpore checkpoint",
                 "vit_npz": "npz archive"}


class FetchError(Exception):
  """A download that failed; the message says why (a partial download is kept for
  resuming when the server supports it)."""


def is_drive(url: str) -> bool:
  return urllib.parse.urlsplit(url).hostname in _DRIVE_HOSTS


def is_automatic(url: str) -> bool:
  """Whether `fetch` can download the URL (Baidu's share pages need its own client)."""
  return url.startswith(("http://", "https://")) and "pan.baidu.com" not in url


def fetch(url: str, dest: str, desc: str) -> None:
  """Downloads `url` to `dest` (Google Drive links through gdown). A partial download stays
  next to `dest` and the next call resumes it.

  Raises:
    FetchError: the download failed or stopped (the message says why).
  """
  if is_drive(url):
    _fetch_drive(url, dest)
  else:
    _fetch_http(url, dest, desc)


def _fetch_http(url: str, dest: str, desc: str) -> None:
  partial = dest + ".partial"
  offset = os.path.getsize(partial) if os.path.exists(partial) else 0
  headers = {"User-Agent": "gcp", **({"Range": f"bytes={offset}-"} if offset else {})}
  try:
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=TIMEOUT)
  except urllib.error.HTTPError as e:
    if e.code == 416 and offset:  # the partial download is the whole file already
      os.replace(partial, dest)
      return
    raise FetchError(f"{url} answered HTTP {e.code} {e.reason}") from e
  except (urllib.error.URLError, OSError) as e:
    raise FetchError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from e
  with response:
    if offset and response.status != 206:  # the server ignored the range: start over
      offset = 0
    length = response.headers.get("Content-Length")
    total = int(length) + offset if length else None
    received = offset
    with open(partial, "ab" if offset else "wb") as f, tqdm.tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=desc, dynamic_ncols=True) as bar:
      try:
        while chunk := response.read(CHUNK):
          f.write(chunk)
          received += len(chunk)
          bar.update(len(chunk))
      except (http.client.IncompleteRead, OSError) as e:  # timeouts are OSErrors
        reason = f"{type(e).__name__}: {e}"
      else:
        reason = ""
  if reason or (total is not None and received < total):
    raise FetchError(f"the download from {url} stopped after {received:,} of "
                     f"{f'{total:,}' if total else 'an unknown number of'} bytes"
                     f"{f' ({reason})' if reason else ''}; the same command resumes it")
  os.replace(partial, dest)


def drive_id(url: str) -> str:
  match = _DRIVE_ID.search(url)
  if not match:
    raise FetchError(f"no Google Drive file id in {url}")
  return match.group(1) or match.group(2)


def _fetch_drive(url: str, dest: str) -> None:
  try:
    import gdown
    import requests
  except ImportError:
    raise FetchError("downloading from Google Drive needs gdown, which handles Drive's "
                     "confirmation page: pip install 'gcp[pretrained]' (or pip install "
                     "gdown)") from None
  errors = (requests.RequestException, OSError,
            *(getattr(gdown.exceptions, name) for name in ("FileURLRetrievalError",
                                                           "DownloadError")
              if hasattr(gdown.exceptions, name)))
  try:
    # resume=True picks up gdown's own partial file (<dest>XXXXXXXX.part) next to `dest`.
    gdown.download(id=drive_id(url), output=dest, quiet=False, resume=True)
  except errors as e:
    raise FetchError(f"Google Drive did not serve {url}: "
                     f"{' '.join(str(e).split()) or type(e).__name__}") from e


def content_problem(path: str, format: str) -> str:
  """"" if the file starts as a file of `format` (a key of `gcp.convert.FORMATS`) does, else
  what it is instead: an HTML page (with its title and message: Drive's quota, permission
  and virus-scan pages), an empty file, or a file that starts with other bytes."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(1 << 16)
  if not size:
    return "an empty file"
  if head.startswith(_MAGIC[format]):
    return ""
  text = head.decode("utf-8", "replace")
  if re.match(r"\s*(<!doctype html|<html|<\?xml|<head|<body)", text, re.IGNORECASE):
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.IGNORECASE | re.DOTALL)
    body = _clean(re.sub(r"<[^>]+>", " ", body))
    return (f"an HTML page of {size:,} bytes"
            f"{f' titled {_clean(title.group(1))!r}' if title else ''}, not the "
            f"{_FORMAT_NAMES[format]}: \"{body[:300]}\"")
  return (f"a file of {size:,} bytes that is not a {_FORMAT_NAMES[format]} (it starts with "
          f"{head[:16]!r})")


def _clean(text: str) -> str:
  return " ".join(html.unescape(text).split())
