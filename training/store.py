"""The BentoML model store: training writes artifacts into it, `make serve` fills it from the repo.

Each artifact folder (see models/artifact.py) becomes one store model. The copies shipped in
models/pretrained/<name>/ carry a `bentoml.json` with the tag they had in the store, so an
imported model keeps its version and /models reports the tag its model card describes.
A shipped artifact is verified against its checksums.json before it is imported, and a damaged
one is refused; a store copy imported before checksums were recorded gets the shipped
checksums once its files are found to match them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml

from models.artifact import read_json, write_json
from models.integrity import CHECKSUMS_FILE, ArtifactError, read_checksums, record_checksums, verify_model

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models" / "pretrained"
STORE_INFO_FILE = "bentoml.json"


def new_version() -> str:
    return datetime.now(UTC).strftime("v%Y%m%d-%H%M%S")


def save_to_store(name: str, write: Callable[[Path], None], labels: dict[str, str],
                  metadata: dict[str, Any], version: str | None = None) -> bentoml.Model:
    """Create store model `name:version`; `write(path)` fills its folder."""
    tag = f"{name}:{version or new_version()}"
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        write(Path(model.path))
    log.info("saved %s to the BentoML store", model.tag)
    return model


def import_shipped(directory: Path = SHIPPED_DIR) -> list[str]:
    """Import every shipped artifact whose tag is not yet in the local store. Returns new tags.

    Raises ArtifactError, naming the tag and the file, for a damaged shipped artifact.
    """
    imported = []
    for folder in sorted(p for p in directory.glob("*") if (p / STORE_INFO_FILE).is_file()):
        info = read_json(folder / STORE_INFO_FILE)
        tag = f"{info['name']}:{info['version']}"
        if not verify_model(f"{tag} (shipped)", folder):
            raise ArtifactError(f"model {tag} (shipped) is damaged: {folder / CHECKSUMS_FILE} is missing")
        try:
            stored = bentoml.models.get(tag)
        except bentoml.exceptions.NotFound:
            stored = None
        if stored is not None:
            if read_checksums(Path(stored.path)) is None:
                add_shipped_checksums(tag, folder, Path(stored.path))
            continue

        def copy(path: Path, folder: Path = folder) -> None:
            for item in folder.iterdir():
                if item.name != STORE_INFO_FILE:
                    shutil.copy2(item, path / item.name)

        save_to_store(info["name"], copy, info["labels"], info["metadata"], info["version"])
        imported.append(tag)
    return imported


def add_shipped_checksums(tag: str, shipped: Path, stored: Path) -> None:
    """Give a store copy imported before checksums were recorded the shipped checksums, once its
    files match them: the store then verifies it as fully as a new import."""
    verify_model(tag, stored, read_checksums(shipped))
    shutil.copy2(shipped / CHECKSUMS_FILE, stored / CHECKSUMS_FILE)
    log.info("%s: the store copy matches the shipped checksums; recorded them beside it", tag)


def record_store_checksums(tag: str) -> Path:
    """Record checksums for a store model that has none (stored before they were recorded). The
    operator vouches for its files by running this: nothing can check them against their origin."""
    model = bentoml.models.get(tag)
    path = Path(model.path)
    if read_checksums(path) is not None:
        raise ArtifactError(f"model {model.tag} already has {CHECKSUMS_FILE}: it is verified on "
                            "every load and is not rewritten")
    verify_model(str(model.tag), path)  # its weights at least are sound
    record_checksums(path)
    return path


def ship(tag: str, directory: Path = SHIPPED_DIR) -> Path:
    """Copy a store model into models/pretrained/<name>/ (replacing the shipped one)."""
    model = bentoml.models.get(tag)
    verify_model(str(model.tag), model.path)
    target = directory / model.tag.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model.path, target, ignore=shutil.ignore_patterns("model.yaml"))
    write_json(target / STORE_INFO_FILE, {"name": model.tag.name, "version": model.tag.version,
                                          "labels": model.info.labels,
                                          "metadata": model.info.metadata})
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    import_cmd = commands.add_parser("import-shipped", help="import shipped models missing from the store")
    import_cmd.add_argument("--dir", type=Path, default=SHIPPED_DIR,
                            help=f"folder of shipped artifacts (default {SHIPPED_DIR})")
    record_cmd = commands.add_parser(
        "record-checksums", help=f"write {CHECKSUMS_FILE} for store models stored before checksums "
        "were recorded (only for models whose files you trust)")
    record_cmd.add_argument("tags", nargs="+", help="store tags, e.g. sentiment-rnn:v20261204-173004")
    ship_cmd = commands.add_parser("ship", help="copy store models into models/pretrained/")
    ship_cmd.add_argument("tags", nargs="+", help="store tags, e.g. sentiment-rnn:latest")
    ship_cmd.add_argument("--dir", type=Path, default=SHIPPED_DIR,
                          help=f"folder of shipped artifacts to write into (default {SHIPPED_DIR})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "import-shipped":
            tags = import_shipped(args.dir)
            log.info("imported %s", ", ".join(tags) if tags else "nothing: the store has every shipped model")
        elif args.command == "record-checksums":
            for tag in args.tags:
                log.info("recorded the checksums of %s in %s", tag, record_store_checksums(tag))
        else:
            for tag in args.tags:
                log.info("shipped %s to %s", tag, ship(tag, args.dir))
    except ArtifactError as err:
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
