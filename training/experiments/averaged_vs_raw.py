"""What weight averaging buys: validation loss of a generator checkpoint's raw and averaged weights.

    python -m training.experiments.averaged_vs_raw checkpoints/char-generator/best.pt --hidden-size 512

A checkpoint of `train_generator --ema D` holds both the weights the optimizer moved ("raw") and
their exponential moving average ("averaged", what validation scores and what ships). The flags
after the path are train_generator's and must describe the checkpoint's architecture. Prints one
JSON line per set of weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models.generator import CharGenerator, CharLM
from models.vocab import Vocab
from training import data, flags, loop, train_generator
from training.evaluate import char_loss


@torch.inference_mode()
def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="last.pt or best.pt of a run with --ema")
    args, rest = parser.parse_known_args(argv)
    run = flags.parse_config(train_generator.RunConfig, rest, train_generator.PROFILES,
                             "train_generator flags that describe the checkpoint")
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = state["model"] if "progress" in state else state  # last.pt wraps it with the optimizer
    splits = data.shakespeare_splits()
    vocab = Vocab.build([splits["train"]])
    module = CharLM(train_generator.model_config(run, len(vocab))).eval()
    # the layout train_generator checkpoints, the raw module and its average side by side (the
    # decay only matters while training, any nonzero one builds the layout)
    _, served, saved = loop.weight_average(module, run.ema or 0.5)
    try:
        saved.load_state_dict(state)
    except RuntimeError as error:
        raise SystemExit(f"{args.checkpoint}: no averaged weights of this architecture (trained "
                         f"with --ema? the same flags?): {str(error)[:300]}") from error
    results = {}
    for name, weights in (("raw", module), ("averaged", served)):
        results[name] = char_loss(CharGenerator(weights.eval(), vocab), splits["val"])
        print(json.dumps({"weights": name, **results[name]}), flush=True)
    return results


if __name__ == "__main__":
    main()
