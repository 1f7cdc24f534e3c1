"""Train every served model in turn into the BentoML store.

    python -m training.train_all --profile full     # what `make train` runs
    python -m training.train_all --profile quick    # minutes: `make train-quick`
"""

from __future__ import annotations

import argparse
import json
import logging

from training import train_generator, train_sentiment, train_translator

log = logging.getLogger(__name__)

# Each entry: (label, main, flags per profile).
RUNS = (
    ("sentiment", train_sentiment.main, {"full": [], "quick": []}),
    ("translator de-en", train_translator.main,
     {"full": ["--pair", "de-en"], "quick": ["--pair", "de-en"]}),
    ("translator ko-en", train_translator.main,
     {"full": ["--profile", "full-ko", "--pair", "ko-en"],
      "quick": ["--pair", "ko-en", "--source-vocab", "1000", "--character-coverage", "0.9995"]}),
    ("generator", train_generator.main, {"full": [], "quick": []}),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("full", "quick"), default="full",
                        help="full: the shipped models' settings; quick: a smoke run of each")
    parser.add_argument("--only", nargs="+", choices=[label for label, _, _ in RUNS],
                        help="train only these")
    parser.add_argument("--store", action=argparse.BooleanOptionalAction, default=True,
                        help="save the artifacts into the BentoML store (--no-store: temp folders)")
    args = parser.parse_args(argv)
    for label, run, extra in RUNS:
        if args.only and label not in args.only:
            continue
        log.info("training %s (%s profile)", label, args.profile)
        store = [] if args.store else ["--no-store"]
        metrics = run(["--profile", args.profile, *extra[args.profile], *store])
        print(json.dumps({"model": metrics["model"], "folder": metrics["folder"],
                          "test": metrics["test"]}), flush=True)


if __name__ == "__main__":
    main()
