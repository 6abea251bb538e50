"""Fetching files from the network, with checksums and a clear message when there is no network."""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from lmft.data.tasks import EMBEDDED_TASKS
from lmft.io import LmftError, atomic_path

log = logging.getLogger(__name__)

# LM-BFF's packed original data (SST-2, SST-5, MR, CR, MPQA, Subj, TREC, MNLI, SNLI, QNLI, RTE,
# MRPC, QQP, ...), as its README links it; extracted under data/raw/_lmbff/original/.
LMBFF_URL = "https://nlp.cs.princeton.edu/projects/lm-bff/datasets.tar"
# AG News in the CSV form of Zhang et al. (2015): label (1-4), title, description.
AG_NEWS_URLS = {
    "train": "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/train.csv",
    "test": "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/test.csv",
}
SNLI_URL = "https://nlp.stanford.edu/projects/snli/snli_1.0.zip"
# Amazon reviews, 1-5 stars, in the CSV form of Zhang et al. (2015) (label, title, review), as the
# fast.ai mirror of their archive serves it.
AMAZON_URL = "https://s3.amazonaws.com/fast-ai-nlp/amazon_review_full_csv.tgz"
# XSum (Narayan et al. 2018): the Hugging Face hub's parquet conversion of EdinburghNLP/xsum
# (columns document, summary, id; the official train and test splits).
XSUM_PARQUET = "https://huggingface.co/datasets/EdinburghNLP/xsum/resolve/refs%2Fconvert%2Fparquet/default"
XSUM_URLS = {split: f"{XSUM_PARQUET}/{split}/0000.parquet" for split in ("train", "test")}
# bAbI tasks v1.2 (Weston et al. 2015): the 20 tasks in English and Hindi, 1k and 10k examples each
# (also at http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz).
BABI_URL = "https://dl.fbaipublicfiles.com/babi/tasks_1-20_v1-2.tar.gz"
# Published checksums, where the upstream publishes one. None: the download is hashed and the hash is
# recorded in source.json (and logged) so that a later download can be compared with it.
SHA256: dict[str, str | None] = {LMBFF_URL: None, SNLI_URL: None, AMAZON_URL: None, BABI_URL: None,
                                 **{u: None for u in AG_NEWS_URLS.values()}, **{u: None for u in XSUM_URLS.values()}}


class NoNetworkError(LmftError):
    """The network source of a task cannot be reached."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, task: str, sha256: str | None = None, timeout: float = 30.0) -> str:
    """Download ``url`` to ``dest`` atomically; verify ``sha256`` when given; return the file's sha256.

    With no network, raises :class:`NoNetworkError` naming the task, the URL and where to place
    the file by hand.
    """
    dest = Path(dest)
    sha256 = sha256 or SHA256.get(url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_path(dest) as tmp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=f"{task}: {dest.name}") as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
            digest = sha256_of(tmp)
            if sha256 and digest != sha256:
                raise LmftError(f"task {task}: {url} has sha256 {digest}, expected {sha256}; the download is "
                                "corrupt or the upstream file changed")
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        if isinstance(e, LmftError):
            raise
        raise NoNetworkError(
            f"task {task}: cannot download {url} ({e}). With no network, download it elsewhere and place it "
            f"at {dest} (then rerun), or use an embedded task ({', '.join(EMBEDDED_TASKS)}) "
            "or a user task from a local file."
        ) from e
    if not sha256:
        log.warning("%s: no published sha256 for %s; downloaded file has sha256 %s", task, url, digest)
    return digest


def fetch_or_reuse(url: str, dest: Path, task: str) -> str:
    """Reuse a file placed by hand (or an earlier download) at ``dest``, else fetch it."""
    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size > 0:
        digest = sha256_of(dest)
        expected = SHA256.get(url)
        if expected and digest != expected:
            raise LmftError(f"task {task}: {dest} has sha256 {digest}, expected {expected} for {url}")
        return digest
    return fetch(url, dest, task)


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` via a temporary folder renamed at the end."""
    import tarfile

    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
