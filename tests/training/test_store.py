"""The model store: shipped artifacts are imported once with their tag, and ship copies back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.tiny_models import make_tiny_sentiment, write_shipped

REPO = Path(__file__).resolve().parent.parent.parent


def run_store(home: Path, *args: str) -> str:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run([sys.executable, "-m", "training.store", *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
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
