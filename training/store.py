"""The BentoML model store: training writes artifacts into it, `make serve` fills it from the repo.

Each artifact folder (see models/artifact.py) becomes one store model. The copies shipped in
models/pretrained/<name>/ carry a `bentoml.json` with the tag they had in the store, so an
imported model keeps its version and /models reports the tag its model card describes.
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
    """Import every shipped artifact whose tag is not yet in the local store. Returns new tags."""
    imported = []
    for folder in sorted(p for p in directory.glob("*") if (p / STORE_INFO_FILE).is_file()):
        info = read_json(folder / STORE_INFO_FILE)
        tag = f"{info['name']}:{info['version']}"
        try:
            bentoml.models.get(tag)
            continue
        except bentoml.exceptions.NotFound:
            pass

        def copy(path: Path, folder: Path = folder) -> None:
            for item in folder.iterdir():
                if item.name != STORE_INFO_FILE:
                    shutil.copy2(item, path / item.name)

        save_to_store(info["name"], copy, info["labels"], info["metadata"], info["version"])
        imported.append(tag)
    return imported


def ship(tag: str, directory: Path = SHIPPED_DIR) -> Path:
    """Copy a store model into models/pretrained/<name>/ (replacing the shipped one)."""
    model = bentoml.models.get(tag)
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
    ship_cmd = commands.add_parser("ship", help="copy store models into models/pretrained/")
    ship_cmd.add_argument("tags", nargs="+", help="store tags, e.g. sentiment-rnn:latest")
    ship_cmd.add_argument("--dir", type=Path, default=SHIPPED_DIR,
                          help=f"folder of shipped artifacts to write into (default {SHIPPED_DIR})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "import-shipped":
        tags = import_shipped(args.dir)
        log.info("imported %s", ", ".join(tags) if tags else "nothing: the store has every shipped model")
    else:
        for tag in args.tags:
            log.info("shipped %s to %s", tag, ship(tag, args.dir))


if __name__ == "__main__":
    main()
