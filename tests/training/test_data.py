"""training.data on tiny made-up files in each dataset's format; no network.

Downloads go through file:// URLs or a loopback http.server. The one test on the real files
runs only where $RNNSERVE_DATA_DIR points at them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from training import data
from training.data import DATA_DIR_ENV, DataFile, DatasetError


def write(root: Path, relative_path: str, content: bytes | str) -> bytes:
    raw = content.encode("utf-8") if isinstance(content, str) else content
    path = root / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return raw


def spec_for(relative_path: str, raw: bytes, url: str | None = None) -> DataFile:
    return DataFile(relative_path, url or f"https://example.invalid/{relative_path}",
                    hashlib.sha256(raw).hexdigest(), len(raw))


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty $RNNSERVE_DATA_DIR; tests write made-up files into it."""
    root = tmp_path / "datasets"
    root.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(root))
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache and no data dir: fetch downloads."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    root = tmp_path / "cache"
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(root))
    return root


def registry_of(root: Path, files: dict[str, bytes | str]) -> dict[str, DataFile]:
    """Write `files` under root and register each with its own sha256."""
    return {p: spec_for(p, write(root, p, content)) for p, content in files.items()}


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---- readers ----

SST_FILES = {
    # GLUE rows end in a space before the TAB.
    "glue_sst2/train.tsv": "sentence\tlabel\na gentle , funny film \t1\nflat \t0\nlabel \t1\n",
    "sst2/stsa.binary.dev": "1 warm and -lrb- mostly -rrb- wise .\n0 a dull 1\\/2 hour .\n",
    "sst2/stsa.binary.test": "0 never once surprising .\n",
    "sst2/stsa.binary.train": "1 a small gem .\n0 it 's a mess .\n1 charming\n",
}


def test_sst2_splits_parse_glue_and_stsa(data_dir):
    splits = data.sst2_splits(registry_of(data_dir, SST_FILES))
    # Header skipped, space before the TAB stripped, a row whose text is "label" kept.
    assert splits["train"] == [("a gentle , funny film", 1), ("flat", 0), ("label", 1)]
    # stsa text stays raw (escapes included): models.text normalises it.
    assert splits["dev"] == [("warm and -lrb- mostly -rrb- wise .", 1), ("a dull 1\\/2 hour .", 0)]
    assert splits["test"] == [("never once surprising .", 0)]
    assert splits["train_sentences"] == [("a small gem .", 1), ("it 's a mess .", 0), ("charming", 1)]


@pytest.mark.parametrize(("path", "content", "message"), [
    ("glue_sst2/train.tsv", "text\tlabel\nfine \t1\n", "header"),
    ("glue_sst2/train.tsv", "sentence\tlabel\nfine \t1\t0\n", "train.tsv:2"),
    ("sst2/stsa.binary.dev", "1 good .\n2 bad .\n", "stsa.binary.dev:2"),
])
def test_sst2_malformed_rows_name_file_and_line(data_dir, path, content, message):
    registry = registry_of(data_dir, {**SST_FILES, path: content})
    with pytest.raises(DatasetError, match=message):
        data.sst2_splits(registry)


@pytest.mark.parametrize("length", [1000, 1001, 17])
def test_shakespeare_split_is_nanogpt_90_10(data_dir, length):
    text = ("First Citizen:\nBefore we proceed.\r\n" * 40)[:length]
    splits = data.shakespeare_splits(registry_of(data_dir, {data.SHAKESPEARE: text}))
    assert len(splits["train"]) == int(length * 0.9)
    assert splits["train"] + splits["val"] == text  # "\r\n" kept: no newline translation


def multi30k_files(overrides: dict[str, bytes] | None = None) -> dict[str, bytes]:
    lines = {
        "train": (["Ein Hund läuft. ", "Zwei\u00a0Kinder spielen.\u00a0"],
                  ["A dog runs.", "Two children play."]),
        "val": (["Eine Frau liest."], ["A woman reads. "]),
        "test": (["Ein Mann\u2028singt.", "Kein Satz"], ["A man\u2028sings.", "No sentence"]),
    }
    files = {}
    for split, (de, en) in lines.items():
        for lang, sentences in (("de", de), ("en", en)):
            files[data.MULTI30K[split][lang]] = gzip.compress("".join(s + "\n" for s in sentences).encode())
    return {**files, **(overrides or {})}


def test_multi30k_splits_gunzip_pair_and_strip(data_dir):
    splits = data.multi30k_splits(registry_of(data_dir, multi30k_files()))
    assert splits["train"] == [("Ein Hund läuft.", "A dog runs."),
                               ("Zwei\u00a0Kinder spielen.", "Two children play.")]
    assert splits["val"] == [("Eine Frau liest.", "A woman reads.")]
    # U+2028 is not a line break in these files: splitting on it would misalign the pairs.
    assert splits["test"] == [("Ein Mann\u2028singt.", "A man\u2028sings."), ("Kein Satz", "No sentence")]


def test_multi30k_line_count_mismatch_raises(data_dir):
    short = {data.MULTI30K["val"]["en"]: gzip.compress(b"")}
    with pytest.raises(DatasetError, match="val.de.gz has 1 lines"):
        data.multi30k_splits(registry_of(data_dir, multi30k_files(short)))


def kor_txt() -> str:
    """600 made-up rows in Tatoeba's en<TAB>ko<TAB>attribution format, with repeats on purpose."""
    rows = [(f"Sentence number {i}.", f"문장 {i}번.") for i in range(600)]
    rows += [rows[3], rows[3], rows[10]]  # exact duplicate pairs
    rows += [(f"Another way to say {i}.", f"문장 {i}번.") for i in range(20, 60)]  # Korean repeated
    rows += [(f"Sentence number {i}.", f"다른 문장 {i}.") for i in range(40, 80)]  # English repeated
    return "".join(f"{en}\t{ko}\tCC-BY 2.0 (France) Attribution: example #{n}\n"
                   for n, (en, ko) in enumerate(rows))


def test_ko_en_split_sizes_dedup_and_no_leak(data_dir):
    registry = registry_of(data_dir, {data.KOR_ENG: kor_txt()})
    splits = data.ko_en_splits(registry=registry)
    assert len(splits["test"]) == len(splits["val"]) == data.KO_EN_HELD_OUT
    every = splits["train"] + splits["val"] + splits["test"]
    assert len(every) == len(set(every)) == 600 + 40 + 40  # duplicates dropped, nothing lost
    assert ("문장 3번.", "Sentence number 3.") in every  # (ko, en) order
    train_sides = {s for pair in splits["train"] for s in pair}
    for held_out in ("val", "test"):
        assert not {s for pair in splits[held_out] for s in pair} & train_sides
    assert not set(splits["val"]) & set(splits["test"])


def test_ko_en_split_is_seeded(data_dir):
    registry = registry_of(data_dir, {data.KOR_ENG: kor_txt()})
    assert data.ko_en_splits(13, registry) == data.ko_en_splits(13, registry)
    assert data.ko_en_splits(13, registry)["test"] != data.ko_en_splits(14, registry)["test"]


# ---- fetch: data dir ----

def test_data_dir_missing_file_names_env_and_url(data_dir):
    spec = spec_for("sst2/stsa.binary.dev", b"1 fine .\n")
    with pytest.raises(DatasetError) as err:
        data.fetch(spec.path, {spec.path: spec})
    assert DATA_DIR_ENV in str(err.value) and spec.url in str(err.value)


def test_data_dir_sha_mismatch_is_refused(data_dir):
    write(data_dir, "a/b.txt", b"edited\n")
    spec = spec_for("a/b.txt", b"original\n")
    with pytest.raises(DatasetError, match="sha256"):
        data.fetch(spec.path, {spec.path: spec})


def test_unregistered_path_raises(data_dir):
    with pytest.raises(DatasetError, match="not a registered"):
        data.fetch("nope.txt", {})


def test_file_sha256s_and_sha256_of(data_dir):
    registry = registry_of(data_dir, SST_FILES)
    expected = {p: hashlib.sha256(c.encode()).hexdigest() for p, c in SST_FILES.items()}
    assert data.file_sha256s(SST_FILES, registry) == expected
    assert data.sha256_of("sst2", registry) == expected


# ---- fetch: downloads into the cache ----

def test_file_url_download_is_verified_cached_and_reused(tmp_path, cache):
    raw = write(tmp_path / "remote", "kor.txt", "Hi.\t안녕.\tCC-BY\n")
    spec = spec_for("kor_eng_tatoeba/kor.txt", raw, (tmp_path / "remote" / "kor.txt").as_uri())
    registry = {spec.path: spec}
    path = data.fetch(spec.path, registry)
    assert path == cache / spec.path and path.read_bytes() == raw
    assert files_under(cache) == [path]  # no temp file left beside it
    (tmp_path / "remote" / "kor.txt").unlink()
    assert data.fetch(spec.path, registry) == path  # served from the cache, no download


def test_damaged_cache_file_is_downloaded_again(tmp_path, cache):
    raw = write(tmp_path / "remote", "x.txt", b"right bytes\n")
    spec = spec_for("d/x.txt", raw, (tmp_path / "remote" / "x.txt").as_uri())
    write(cache, spec.path, b"truncat")
    assert data.fetch(spec.path, {spec.path: spec}).read_bytes() == raw


def test_download_sha_mismatch_leaves_nothing_in_cache(tmp_path, cache):
    write(tmp_path / "remote", "x.txt", b"changed upstream\n")
    spec = spec_for("d/x.txt", b"pinned\n", (tmp_path / "remote" / "x.txt").as_uri())
    with pytest.raises(DatasetError, match="sha256"):
        data.fetch(spec.path, {spec.path: spec})
    assert files_under(cache) == []


def test_failed_download_names_url_and_env(tmp_path, cache):
    spec = spec_for("d/x.txt", b"pinned\n", (tmp_path / "absent.txt").as_uri())
    with pytest.raises(DatasetError) as err:
        data.fetch(spec.path, {spec.path: spec})
    assert spec.url in str(err.value) and DATA_DIR_ENV in str(err.value)
    assert files_under(cache) == []


@pytest.fixture
def http_root(tmp_path):
    """A loopback http.server serving tmp_path/www; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_download_verifies_and_caches(http_root, cache):
    root, base = http_root
    raw = write(root, "train.de.gz", gzip.compress(b"Ein Hund.\n" * 5000))
    spec = spec_for("multi30k/task1/raw/train.de.gz", raw, f"{base}/train.de.gz")
    path = data.fetch(spec.path, {spec.path: spec})
    assert path.read_bytes() == raw and files_under(cache) == [path]


def test_http_404_raises_and_leaves_nothing(http_root, cache):
    _, base = http_root
    spec = spec_for("d/x.txt", b"pinned\n", f"{base}/x.txt")
    with pytest.raises(DatasetError, match="404") as err:
        data.fetch(spec.path, {spec.path: spec})
    assert spec.url in str(err.value) and DATA_DIR_ENV in str(err.value)
    assert files_under(cache) == []


def fdu_files(overrides: dict[str, bytes | str] | None = None, reviews: int = 20) -> dict[str, bytes | str]:
    """Made-up FDU-MTL files for all 14 domains: `reviews` distinct train lines and 2 test lines
    each (label<TAB>text), with `overrides` {path: content} replacing some."""
    files: dict[str, bytes | str] = {}
    for domain, paths in data.FDU_MTL.items():
        files[paths["train"]] = "".join(f"{i % 2}\t{domain} review number {i} .\n"
                                        for i in range(reviews))
        files[paths["test"]] = f"1\t{domain} test one .\n0\t{domain} test two .\n"
    return {**files, **(overrides or {})}


def test_fdu_splits_drop_test_texts_repeats_and_carve_a_disjoint_dev(data_dir):
    apparel, dvd, video = (data.FDU_MTL[d] for d in ("apparel", "dvd", "video"))
    registry = registry_of(data_dir, fdu_files({
        # a text of another domain's test file, a repeat with the other label, and 10 distinct
        apparel["train"]: "1\tbooks test one .\n" + "".join(f"{i % 2}\tshirt {i}\n" for i in range(10))
                          + "0\tshirt 1\n",
        # dvd and video share a review: only dvd (first in domain order) keeps it
        dvd["train"]: "".join(f"1\tfilm {i}\n" for i in range(10)),
        video["train"]: "1\tfilm 3\n" + "".join(f"0\ttape {i}\n" for i in range(9)),
    }))
    splits = data.fdu_mtl_splits(seed=5, registry=registry)
    assert sorted(splits["train"]) == sorted(data.FDU_DOMAINS) == sorted(splits["dev"])
    apparel_all = splits["train"]["apparel"] + splits["dev"]["apparel"]
    assert sorted(apparel_all) == sorted((f"shirt {i}", i % 2) for i in range(10))  # first label kept
    assert len(splits["dev"]["apparel"]) == 1 and len(splits["train"]["apparel"]) == 9  # 10% dev
    video_all = splits["train"]["video"] + splits["dev"]["video"]
    assert ("film 3", 1) not in video_all and len(video_all) == 9
    test_texts = {text for pairs in splits["test"].values() for text, _ in pairs}
    train_texts = [text for pairs in splits["train"].values() for text, _ in pairs]
    dev_texts = [text for pairs in splits["dev"].values() for text, _ in pairs]
    assert not test_texts & set(train_texts + dev_texts)
    assert not set(train_texts) & set(dev_texts)
    assert len(train_texts + dev_texts) == len(set(train_texts + dev_texts))
    assert splits["test"]["books"] == [("books test one .", 1), ("books test two .", 0)]


def test_fdu_dev_split_is_seeded_per_domain(data_dir):
    registry = registry_of(data_dir, fdu_files(reviews=40))
    first = data.fdu_mtl_splits(seed=1, registry=registry)
    again = data.fdu_mtl_splits(seed=1, registry=registry)
    other = data.fdu_mtl_splits(seed=2, registry=registry)
    assert first == again
    assert first["dev"] != other["dev"]
    assert all(len(pairs) == 4 for pairs in first["dev"].values())


def test_fdu_non_utf8_byte_is_replaced_not_fatal(data_dir):
    path = data.FDU_MTL["dvd"]["train"]
    registry = registry_of(data_dir, fdu_files({path: b"1\tgreat \xff disc\n0\tdull disc\n"}))
    splits = data.fdu_mtl_splits(registry=registry)
    texts = {text for text, _ in splits["train"]["dvd"] + splits["dev"]["dvd"]}
    assert texts == {"great \ufffd disc", "dull disc"}


@pytest.mark.parametrize(("content", "message"), [("2\tbad label\n", "apparel.task.train:1"),
                                                  ("1\tone\ttoo many\n", "apparel.task.train:1")])
def test_fdu_malformed_rows_name_file_and_line(data_dir, content, message):
    registry = registry_of(data_dir, fdu_files({data.FDU_MTL["apparel"]["train"]: content}))
    with pytest.raises(DatasetError, match=message):
        data.fdu_mtl_splits(registry=registry)


# ---- the real files ----

@pytest.mark.skipif(not os.environ.get(DATA_DIR_ENV), reason=f"{DATA_DIR_ENV} is not set")
def test_real_files_verify_and_split_sizes():
    for path in data.REGISTRY:  # every pinned sha256 and size matches the shared copy
        assert data.fetch(path).stat().st_size == data.REGISTRY[path].size
    sst2 = data.sst2_splits()
    assert {k: len(v) for k, v in sst2.items()} == {"train": 67349, "dev": 872, "test": 1821,
                                                    "train_sentences": 6920}
    assert {k: len(v) for k, v in data.shakespeare_splits().items()} == {"train": 1003854, "val": 111540}
    assert {k: len(v) for k, v in data.multi30k_splits().items()} == {"train": 29000, "val": 1014,
                                                                      "test": 1000}
    fdu = data.fdu_mtl_splits()  # 22,180 train rows less those in a test file and the repeats
    assert {k: sum(map(len, v.values())) for k, v in fdu.items()} == {"train": 18330, "dev": 2035,
                                                                       "test": 5600}
    ko_en = data.ko_en_splits()
    # kor.txt has 5749 rows and no exact duplicate pairs.
    assert {k: len(v) for k, v in ko_en.items()} == {"train": 5249, "val": 250, "test": 250}
