"""The model store: shipped artifacts are imported once with their tag, and ship copies back.
A damaged shipped artifact is refused with one line naming the tag and the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from models.integrity import CHECKSUMS_FILE, WEIGHTS_FILE

from support.tiny_models import make_tiny_sentiment, write_shipped

REPO = Path(__file__).resolve().parent.parent.parent


def run_store(home: Path, *args: str, returncode: int = 0) -> str:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run([sys.executable, "-m", "training.store", *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == returncode, result.stderr
    return result.stderr


def test_import_shipped_keeps_the_tag_and_runs_once(tmp_path):
    shipped = tmp_path / "pretrained"
    write_shipped(shipped, "sentiment-rnn", make_tiny_sentiment(), "sentiment", "gru")
    home = tmp_path / "home"
    assert "imported sentiment-rnn:vtest" in run_store(home, "import-shipped", "--dir", str(shipped))
    stored = home / "models" / "sentiment-rnn" / "vtest"
    assert {"config.json", "weights.safetensors", "vocab.json", "metrics.json"} <= {
        p.name for p in stored.iterdir()}
    assert "imported nothing" in run_store(home, "import-shipped", "--dir", str(shipped))


def test_ship_copies_a_store_model_with_its_tag(tmp_path):
    shipped = tmp_path / "pretrained"
    write_shipped(shipped, "sentiment-rnn", make_tiny_sentiment(), "sentiment", "gru")
    home = tmp_path / "home"
    run_store(home, "import-shipped", "--dir", str(shipped))
    out = tmp_path / "out"
    assert f"to {out / 'sentiment-rnn'}" in run_store(home, "ship", "--dir", str(out),
                                                      "sentiment-rnn:latest")
    info = json.loads((out / "sentiment-rnn" / "bentoml.json").read_text())
    assert (info["name"], info["version"]) == ("sentiment-rnn", "vtest")
    assert (out / "sentiment-rnn" / "weights.safetensors").read_bytes() == (
        shipped / "sentiment-rnn" / "weights.safetensors").read_bytes()
    assert not (out / "sentiment-rnn" / "model.yaml").exists()


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_shipped_artifact_is_refused_with_its_tag_and_file(tmp_path):
    shipped = tmp_path / "pretrained"
    folder = write_shipped(shipped, "sentiment-rnn", make_tiny_sentiment(), "sentiment", "gru")
    flip_byte(folder / WEIGHTS_FILE)
    home = tmp_path / "home"
    err = run_store(home, "import-shipped", "--dir", str(shipped), returncode=1)
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"ERROR __main__: model sentiment-rnn:vtest (shipped) is damaged: "
                          f"{folder / WEIGHTS_FILE}: sha256 ")
    assert err.strip().endswith("the file changed after it was written")
    assert not (home / "models" / "sentiment-rnn").exists()


def import_then_forget_checksums(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A store copy as `import-shipped` made it before checksums were recorded."""
    shipped = tmp_path / "pretrained"
    write_shipped(shipped, "sentiment-rnn", make_tiny_sentiment(), "sentiment", "gru")
    home = tmp_path / "home"
    run_store(home, "import-shipped", "--dir", str(shipped))
    stored = home / "models" / "sentiment-rnn" / "vtest"
    (stored / CHECKSUMS_FILE).unlink()
    return shipped, home, stored


def test_an_older_store_copy_gets_the_shipped_checksums_when_its_files_match(tmp_path):
    shipped, home, stored = import_then_forget_checksums(tmp_path)
    assert "matches the shipped checksums" in run_store(home, "import-shipped", "--dir", str(shipped))
    assert (stored / CHECKSUMS_FILE).read_bytes() == (shipped / "sentiment-rnn" / CHECKSUMS_FILE).read_bytes()


def test_an_older_store_copy_that_differs_from_the_shipped_one_is_refused(tmp_path):
    shipped, home, stored = import_then_forget_checksums(tmp_path)
    flip_byte(stored / "vocab.json")
    err = run_store(home, "import-shipped", "--dir", str(shipped), returncode=1)
    assert f"model sentiment-rnn:vtest is damaged: {stored / 'vocab.json'}: sha256 " in err
    assert not (stored / CHECKSUMS_FILE).exists()


def test_record_checksums_vouches_for_an_older_store_model_once(tmp_path):
    shipped, home, stored = import_then_forget_checksums(tmp_path)
    run_store(home, "record-checksums", "sentiment-rnn:vtest")
    assert (stored / CHECKSUMS_FILE).read_bytes() == (shipped / "sentiment-rnn" / CHECKSUMS_FILE).read_bytes()
    err = run_store(home, "record-checksums", "sentiment-rnn:vtest", returncode=1)
    assert f"already has {CHECKSUMS_FILE}" in err


def test_ship_refuses_a_damaged_store_model(tmp_path):
    shipped, home, stored = import_then_forget_checksums(tmp_path)
    shutil.copy2(shipped / "sentiment-rnn" / CHECKSUMS_FILE, stored / CHECKSUMS_FILE)
    flip_byte(stored / WEIGHTS_FILE)
    err = run_store(home, "ship", "--dir", str(tmp_path / "out"), "sentiment-rnn:vtest", returncode=1)
    assert f"model sentiment-rnn:vtest is damaged: {stored / WEIGHTS_FILE}: sha256 " in err
    assert not (tmp_path / "out" / "sentiment-rnn").exists()
