"""What weight averaging buys: validation loss of a generator checkpoint's raw and averaged weights.

    python -m training.averaged_vs_raw checkpoints/char-generator/best.pt --hidden-size 512

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

from models.generator import CharGenerator, CharLM, CharLMConfig
from models.vocab import Vocab
from training import common, data, train_generator
from training.evaluate import char_loss

PREFIXES = {"raw": "model.", "averaged": "ema.module."}


@torch.inference_mode()
def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="last.pt or best.pt of a run with --ema")
    args, rest = parser.parse_known_args(argv)
    run = common.parse_config(train_generator.RunConfig, rest, train_generator.PROFILES,
                              "train_generator flags that describe the checkpoint")
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = state["model"] if "progress" in state else state  # last.pt wraps it with the optimizer
    if not any(key.startswith(PREFIXES["averaged"]) for key in state):
        raise SystemExit(f"{args.checkpoint}: no averaged weights (was it trained with --ema?)")
    splits = data.shakespeare_splits()
    vocab = Vocab.build([splits["train"]])
    config = CharLMConfig(vocab_size=len(vocab), embedding_dim=run.embedding_dim,
                          hidden_size=run.hidden_size, num_layers=run.num_layers, cell=run.cell,
                          dropout=run.dropout)
    results = {}
    for name, prefix in PREFIXES.items():
        module = CharLM(config).eval()
        module.load_state_dict({k.removeprefix(prefix): v for k, v in state.items()
                                if k.startswith(prefix)})
        results[name] = char_loss(CharGenerator(module, vocab), splits["val"])
        print(json.dumps({"weights": name, **results[name]}), flush=True)
    return results


if __name__ == "__main__":
    main()
