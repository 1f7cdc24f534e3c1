"""bentofile.yaml: build the bento offline from a store of tiny models and check what it holds.

Then serve the exported bento the way its container would (`bentoml serve <bento dir>`, an empty
store, not from the repository): the code and models it carries must be enough.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import urllib.request

import pytest
import yaml

from loadtest.server import import_models
from models.sentiment import LABELS, SentimentClassifier

from support.deploy import BIN, REPO, bentoml_server, store_env

pytestmark = pytest.mark.slow

MODELS = ("sentiment-rnn", "char-generator", "translator-de-en", "translator-ko-en")


def network_off() -> list[str]:
    """A command prefix that runs without network when this machine allows it (root, unshare)."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return ["unshare", "-n"] if probe.returncode == 0 else []


@pytest.fixture(scope="module")
def built(tiny_shipped_dir, tmp_path_factory) -> dict:
    """`bentoml build` of bentofile.yaml into a fresh store; the bento's folder and tag."""
    home = tmp_path_factory.mktemp("bento_home")
    import_models(tiny_shipped_dir, home)
    command = [*network_off(), str(BIN / "bentoml"), "build", "-f", "bentofile.yaml", "-o", "tag"]
    result = subprocess.run(command, cwd=REPO, env=store_env(home), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    tag = re.search(r"__tag__:(\S+)", result.stdout).group(1)
    name, version = tag.split(":")
    return {"home": home, "tag": tag, "path": home / "bentos" / name / version}


def test_bento_holds_the_service_and_model_code(built):
    src = built["path"] / "src"
    assert (src / "service" / "app.py").is_file()
    for page in ("index.html", "playground.js", "charts.js", "playground.css"):  # served as they are
        assert (src / "service" / "static" / "playground" / page).is_file()
    for module in ("artifact", "vocab", "sentiment", "generator", "translator"):
        assert (src / "models" / f"{module}.py").is_file()
    # Neither tests, training code, datasets nor the shipped artifacts travel as source.
    assert not (src / "tests").exists() and not (src / "training").exists()
    assert not (src / "models" / "pretrained").exists()
    bento = yaml.safe_load((built["path"] / "bento.yaml").read_text())
    assert bento["service"] == "service.app:RNNServe"


def test_bento_references_the_four_models_from_the_store(built):
    bento = yaml.safe_load((built["path"] / "bento.yaml").read_text())
    assert sorted(model["tag"].split(":")[0] for model in bento["models"]) == sorted(MODELS)


def test_requirements_are_cpu_only_torch_and_pinned(built):
    python = built["path"] / "env" / "python"
    requirements = [line.strip() for line in (python / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert not [line for line in requirements if line.lower().startswith("nvidia")]
    assert "torch==2.13.0+cpu" in requirements
    assert all("==" in line for line in requirements), requirements
    assert any(line.startswith("bentoml==") for line in requirements)
    # Not locked: a lock resolves torch from PyPI, whose wheel pulls the CUDA runtime.
    assert not (python / "requirements.lock.txt").exists()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in (python / "install.sh").read_text()


def test_the_image_pins_the_same_versions_as_the_project():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(line.split("==") for line in project)
    image = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    for line in image:
        name, version = line.split("==")
        assert pins[name] == version.removesuffix("+cpu"), line
    # what the running service imports, or uvicorn picks up (uvloop, httptools)
    for needed in ("torch", "pydantic", "prometheus-client", "sentencepiece", "safetensors", "uvloop",
                   "httptools"):
        assert any(line.startswith(f"{needed}==") for line in image), needed


def test_dockerfile_runs_as_non_root_with_a_healthcheck(built):
    dockerfile = (built["path"] / "env" / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}, users
    assert re.search(r"^HEALTHCHECK .*\n?.*curl -fsS \S*/livez", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^EXPOSE 3000$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^ENTRYPOINT .*entrypoint\.sh", dockerfile, flags=re.MULTILINE)
    assert "nvidia" not in dockerfile.lower() and "cuda" not in dockerfile.lower()


@pytest.mark.server
def test_exported_bento_serves_on_its_own(built, tiny_shipped_dir, tmp_path):
    archive = tmp_path / "rnn-serve.bento"
    subprocess.run([str(BIN / "bentoml"), "export", built["tag"], str(archive)],
                   env=store_env(built["home"]), check=True, capture_output=True, timeout=300)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        for model in MODELS:
            weights = rf"\./models/{model}/[^/]+/weights\.safetensors"
            assert any(re.fullmatch(weights, name) for name in names), model
        tar.extractall(tmp_path / "bento", filter="data")

    # As in the container: BENTOML_HOME without models, started outside the repository.
    env = store_env(tmp_path / "empty_home")
    del env["PYTHONPATH"]
    with bentoml_server(str(tmp_path / "bento"), env, tmp_path, tmp_path / "serve.log") as url:
        with urllib.request.urlopen(f"{url}/livez", timeout=5) as response:
            assert response.status == 200
        request = urllib.request.Request(f"{url}/sentiment", method="POST",
                                         data=json.dumps({"texts": ["a good film"]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)[0]
    # the bento's copy of the model answers as the artifact it was built from
    expected = SentimentClassifier.load(tiny_shipped_dir / "sentiment-rnn").predict_proba(["a good film"])[0]
    assert answer["label"] == LABELS[int(expected.argmax())]
    assert list(answer["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-6)
