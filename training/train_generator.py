"""Train the one-to-many model: a char-level RNN language model on Tiny Shakespeare.

    python -m training.train_generator --cell lstm --max-minutes 30
    torchrun --nproc_per_node=2 -m training.train_generator --profile quick

Training samples random windows, each from a zero state, and validation scores windows of
256 characters from a zero state (nanoGPT's split and block size), so numbers compare.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from models.artifact import ArtifactError
from models.generator import CharGenerator, CharLM, CharLMConfig
from models.rnn import CELLS
from models.vocab import Vocab
from training import artifact_writer, checkpoints, data, devices, flags, loop
from training.evaluate import char_loss
from training.flags import help_field

log = logging.getLogger(__name__)

NAME = "char-generator"


@dataclass
class RunConfig(flags.CommonRun):
    cell: str = help_field("lstm", "recurrent cell", choices=CELLS)
    embedding_dim: int = help_field(64, "character embedding size", minimum=1)
    hidden_size: int = help_field(448, "hidden units per layer", minimum=1)
    num_layers: int = help_field(2, "stacked recurrent layers", minimum=1)
    dropout: float = help_field(0.25, "dropout between layers and before the head", minimum=0.0,
                                maximum=1.0)
    weight_drop: float = flags.weight_drop_field(0.3)
    seq_len: int = help_field(256, "characters per training window", minimum=2)
    batch_size: int = help_field(32, "windows per step (per process under torchrun)", minimum=1)
    steps: int = help_field(3600, "maximum optimizer steps", minimum=1)
    eval_every: int = help_field(400, "steps between validations (an 'epoch' here)", minimum=1)
    eval_windows: int = help_field(0, "validate on the first N windows only (0 = all)", minimum=0)
    patience: int = help_field(4, "stop after this many validations without improvement", minimum=1)
    max_minutes: float = help_field(80.0, "stop at the first validation after this many minutes "
                                    "(0 = no limit)", minimum=0.0)
    lr: float = help_field(3e-3, "peak Adam learning rate (cosine decay to 10%)", minimum=0.0)
    clip: float = help_field(1.0, "gradient norm clip", minimum=0.0)
    init_from: str = help_field("", "start from the weights of this char-generator artifact folder "
                                "(a fine-tune: the architecture flags must match its config.json; "
                                "dropout and weight drop may differ)")
    ema: float = help_field(0.998, "validate and ship an exponential moving average of the weights "
                            "with this decay per step (0 = off; 0.998 averages ~500 steps)",
                            minimum=0.0, maximum=0.9999)


PROFILES = {
    "full": {},
    "quick": {"steps": 60, "eval_every": 30, "hidden_size": 128, "batch_size": 32, "seq_len": 64,
              "eval_windows": 40, "ema": 0.0, "checkpoint_dir": f"checkpoints/{NAME}-quick"},
}


def model_config(run: RunConfig, vocab_size: int) -> CharLMConfig:
    return CharLMConfig(vocab_size=vocab_size, embedding_dim=run.embedding_dim,
                        hidden_size=run.hidden_size, num_layers=run.num_layers, cell=run.cell,
                        dropout=run.dropout, weight_drop=run.weight_drop)


def init_from_artifact(module: CharLM, vocab: Vocab, folder: str) -> None:
    """Load a trained artifact's weights into `module`, which training then goes on from.

    Refuses an artifact whose architecture or characters differ from this run's.
    """
    trained = CharGenerator.load(folder)
    if trained.vocab.itos != vocab.itos:
        raise ArtifactError(f"--init-from {folder}: its characters differ from this training data's")
    # dropout and weight drop act in training only: a fine-tune may change them
    regularisation = {"dropout": module.config.dropout, "weight_drop": module.config.weight_drop}
    if dataclasses.replace(trained.module.config, **regularisation) != module.config:
        raise ArtifactError(f"--init-from {folder}: its architecture {trained.module.config} differs "
                            f"from this run's {module.config}")
    module.load_state_dict(trained.module.float().state_dict())
    log.info("starting from the weights of %s", folder)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = flags.parse_config(RunConfig, argv, PROFILES, __doc__.splitlines()[0])
    device = devices.resolve_device(run.device)
    rank, world = devices.init_distributed(device)
    devices.seed_everything(run.seed)

    splits = data.shakespeare_splits()
    vocab = Vocab.build([splits["train"]])
    module = CharLM(model_config(run, len(vocab))).to(device)
    if run.init_from:
        init_from_artifact(module, vocab, run.init_from)
    averaged, served, saved = loop.weight_average(module, run.ema)
    model = CharGenerator(served, vocab)
    train_ids = torch.tensor(model.encode(splits["train"]))
    log.info("%d training characters, vocab %d, %d parameters", len(train_ids), len(vocab),
             sum(p.numel() for p in module.parameters()))

    ddp = devices.wrap_ddp(module, device, world)
    optimizer = torch.optim.Adam(module.parameters(), lr=run.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, run.steps) / run.steps)))
    checkpoint_dir = run.checkpoints(NAME)
    progress = checkpoints.resume_or_start(run, checkpoint_dir, saved, optimizer)
    schedule.last_epoch = progress.step
    # each rank and each resumed step draws its own windows
    generator = torch.Generator().manual_seed(run.seed * 1000 + rank * 100003 + progress.step)
    validate = {"max_windows": run.eval_windows or None}
    minutes = loop.Timer()
    def batch_loss(starts: list[int]) -> torch.Tensor:
        windows = torch.stack([train_ids[s: s + run.seq_len + 1] for s in starts])
        windows = windows.to(device)  # (B, T+1)
        logits, _ = ddp(windows[:, :-1])  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())

    while progress.step < run.steps and progress.bad_epochs < run.patience:
        timer = loop.Timer()
        # the windows' first characters, one batch per step until the next validation
        batches = [torch.randint(0, len(train_ids) - run.seq_len - 1, (run.batch_size,),
                                 generator=generator).tolist()
                   for _ in range(min(run.eval_every, run.steps - progress.step))]
        train_loss = loop.train_epoch(batches, batch_loss, optimizer, module, run.clip,
                                      progress, rank, averaged, schedule,
                                      precision=run.step_precision(device))
        served.eval()
        val = char_loss(model, splits["val"], **validate)["val_loss"]
        best = checkpoints.end_epoch(progress, {"train_loss": train_loss, "val_loss": val}, val, False,
                                     timer.elapsed(), checkpoint_dir, saved, optimizer, rank)
        log.info("step %d: train loss %.4f, val loss %.4f nats/char%s (%.0f s)", progress.step,
                 train_loss, val, " (best)" if best else "", timer.elapsed())
        if run.max_minutes and minutes.elapsed() > 60 * run.max_minutes:
            log.info("time budget of %.0f minutes reached", run.max_minutes)
            break
    if not checkpoints.end_training(world, rank, checkpoint_dir, saved):
        return {}

    def evaluate(folder: Path) -> tuple[dict, dict]:
        # Tiny Shakespeare has no test split: the nanoGPT validation split is the report split.
        result = char_loss(CharGenerator.load(folder), splits["val"])
        return result, result

    spec = artifact_writer.ArtifactSpec(
        name=NAME, task="generator", cell=run.cell,
        summary=f"One-to-many character-level language model: {run.num_layers}-layer "
        f"{run.cell.upper()} ({run.hidden_size} units) over characters of Tiny Shakespeare. The loss "
        "is in nats per character on the nanoGPT validation split (last 10%), windows of 256 "
        "characters each from a zero state; the dataset has no separate test split.",
        data_sha256=data.sha256_of("tinyshakespeare"), model=model, evaluate=evaluate)
    folder, metrics = artifact_writer.finish_artifact(spec, run, progress, device, argv)
    log.info("artifact %s: validation %s", folder, metrics["test"])
    return {**metrics, "folder": str(folder)}


if __name__ == "__main__":
    main()
