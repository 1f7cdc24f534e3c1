"""Train the many-to-one model: SST-2 sentiment, selected on dev, reported on test.

    python -m training.train_sentiment --cell lstm
    python -m training.train_sentiment --hidden-size 176 --distill-from models/pretrained/sentiment-rnn
    torchrun --nproc_per_node=2 -m training.train_sentiment --profile quick
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from models.rnn import CELLS
from models.sentiment import SentimentClassifier, SentimentConfig, SentimentRNN
from models.text import sentiment_tokens
from models.vocab import Vocab
from training import common, data, store
from training.common import help_field
from training.evaluate import sentiment_accuracy

log = logging.getLogger(__name__)

NAME = "sentiment-rnn"


@dataclass
class RunConfig(common.CommonRun):
    cell: str = help_field("lstm", "recurrent cell", choices=CELLS)
    embedding_dim: int = help_field(300, "word embedding size", minimum=1)
    hidden_size: int = help_field(256, "hidden units per direction", minimum=1)
    num_layers: int = help_field(1, "stacked recurrent layers", minimum=1)
    dropout: float = help_field(0.5, "dropout on embeddings and pooled features", minimum=0.0,
                                maximum=1.0)
    weight_drop: float = common.weight_drop_field(0.3)
    subword_buckets: int = help_field(16384, "hash table size for character 3-5-gram embeddings added "
                                      "to each word's (0 = words only)", minimum=0)
    min_freq: int = help_field(2, "keep words seen at least this often in train", minimum=1)
    epochs: int = help_field(10, "maximum epochs", minimum=1)
    patience: int = help_field(2, "stop after this many epochs without a better dev accuracy",
                               minimum=1)
    batch_size: int = help_field(64, "sentences per step (per process under torchrun)", minimum=1)
    lr: float = help_field(2e-3, "Adam learning rate", minimum=0.0)
    weight_decay: float = help_field(0.0, "Adam weight decay", minimum=0.0)
    clip: float = help_field(5.0, "gradient norm clip", minimum=0.0)
    ema: float = help_field(0.998, "validate and ship an exponential moving average of the "
                            "weights with this decay per step (0 = off)", minimum=0.0,
                            maximum=0.9999)
    train_limit: int = help_field(0, "use only the first N training phrases (0 = all)", minimum=0)
    distill_from: str = help_field("", "a trained sentiment artifact folder to learn from as well: "
                                   "knowledge distillation on its predictions for the training "
                                   "phrases ('' = off)")
    distill_weight: float = help_field(0.5, "with --distill-from, the teacher's share of the loss "
                                       "(the labels' is the rest)", minimum=0.0, maximum=1.0)
    distill_temperature: float = help_field(2.0, "with --distill-from, the softmax temperature of "
                                            "both sides of the teacher's term", minimum=0.01)


PROFILES = {
    "full": {},
    "quick": {"epochs": 1, "train_limit": 3000, "embedding_dim": 64, "hidden_size": 64, "ema": 0.0,
              "weight_drop": 0.0,
              "checkpoint_dir": f"checkpoints/{NAME}-quick"},
}


TEACHER_BATCH = 256


def distillation_loss(logits: Tensor, labels: Tensor, teacher_logits: Tensor, weight: float,
                      temperature: float) -> Tensor:
    """(1 - weight) x cross-entropy with the labels + weight x T^2 x KL(teacher || student), both
    softened by temperature T (Hinton et al. 2015; T^2 keeps the gradients' scale as T changes)."""
    hard = F.cross_entropy(logits, labels)
    if weight == 0.0:
        return hard
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=-1),
                    F.log_softmax(teacher_logits / temperature, dim=-1),
                    reduction="batchmean", log_target=True)
    return (1.0 - weight) * hard + weight * temperature**2 * soft


def teacher_logits(folder: str, texts: list[str]) -> Tensor:
    """The logits (N, C) of the sentiment artifact in `folder` for `texts`, batched by length."""
    teacher = SentimentClassifier.load(folder)
    teacher.module.eval()
    encoded = [teacher.encode(text) for text in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    logits = torch.empty(len(texts), teacher.module.config.num_classes)
    with torch.inference_mode():
        for start in range(0, len(order), TEACHER_BATCH):
            rows = order[start:start + TEACHER_BATCH]
            logits[rows] = teacher.logits(teacher.collate([encoded[i] for i in rows])).float()
    log.info("teacher %s: logits for %d training phrases", folder, len(texts))
    return logits


def teacher_name(folder: str) -> str:
    """The teacher's store tag where its folder records one (models/pretrained/), else its path."""
    info = Path(folder) / store.STORE_INFO_FILE
    if not info.is_file():
        return folder
    tag = json.loads(info.read_text())
    return f"{tag['name']}:{tag['version']}"


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = common.parse_config(RunConfig, argv, PROFILES, __doc__.splitlines()[0])
    device = common.resolve_device(run.device)
    rank, world = common.init_distributed(device)
    common.seed_everything(run.seed)

    splits = data.sst2_splits()
    train = splits["train"][: run.train_limit or None]
    vocab = Vocab.build((sentiment_tokens(text) for text, _ in train), min_freq=run.min_freq)
    config = SentimentConfig(vocab_size=len(vocab), embedding_dim=run.embedding_dim,
                             hidden_size=run.hidden_size, num_layers=run.num_layers, cell=run.cell,
                             dropout=run.dropout, weight_drop=run.weight_drop,
                             subword_buckets=run.subword_buckets)
    module = SentimentRNN(config).to(device)
    averaged, served, saved = common.weight_average(module, run.ema)
    model = SentimentClassifier(served, vocab)
    encoded = [model.encode(text) for text, _ in train]
    labels = torch.tensor([label for _, label in train])
    teacher = teacher_logits(run.distill_from, [text for text, _ in train]) if run.distill_from else None
    log.info("%d training phrases, vocab %d, %d parameters", len(train), len(vocab),
             sum(p.numel() for p in module.parameters()))

    ddp = common.wrap_ddp(module, device, world)
    optimizer = torch.optim.Adam(module.parameters(), lr=run.lr, weight_decay=run.weight_decay)
    checkpoints = run.checkpoints(NAME)
    progress = common.resume_or_start(run, checkpoints, saved, optimizer)
    epochs = common.epoch_batches([len(s) for s in encoded], run.batch_size, run.seed, rank, world,
                                  progress.epoch)

    def batch_loss(batch: list[int]) -> torch.Tensor:
        inputs = SentimentClassifier.collate([encoded[i] for i in batch]).to(device)
        logits = ddp(inputs.tokens, inputs.lengths, inputs.subwords)
        if teacher is None:
            return F.cross_entropy(logits, labels[batch].to(device))
        return distillation_loss(logits, labels[batch].to(device), teacher[batch].to(device),
                                 run.distill_weight, run.distill_temperature)

    while progress.epoch < run.epochs and progress.bad_epochs < run.patience:
        timer = common.Timer()
        train_loss = common.train_epoch(next(epochs), batch_loss, optimizer, module, run.clip,
                                        progress, rank, averaged,
                                        precision=run.step_precision(device))
        served.eval()
        dev = sentiment_accuracy(model, splits["dev"])["accuracy"]
        best = common.end_epoch(progress, {"train_loss": train_loss, "dev_accuracy": dev},
                                dev, True, timer.elapsed(), checkpoints, saved, optimizer, rank)
        log.info("epoch %d: train loss %.4f, dev accuracy %.2f%%%s (%.0f s)", progress.epoch,
                 train_loss, dev, " (best)" if best else "", timer.elapsed())
    if not common.end_training(world, rank, checkpoints, saved):
        return {}

    def evaluate(folder: Path) -> tuple[dict, dict]:
        shipped = SentimentClassifier.load(folder)
        return (sentiment_accuracy(shipped, splits["dev"]),
                sentiment_accuracy(shipped, splits["test"]))

    folder, metrics = common.finish_artifact(
        NAME, "sentiment", run.cell,
        "Many-to-one SST-2 sentiment classifier: word embedding"
        + (f" + mean of hashed character {config.subword_min_n}-{config.subword_max_n}-gram "
           f"embeddings ({config.subword_buckets} buckets)" if config.subword_buckets else "")
        + f" -> bidirectional {run.cell.upper()} over packed sequences -> max+mean pooling -> "
        "linear. "
        "Trained on GLUE SST-2 phrases, selected on the SST-2 dev set, tested on stsa.binary.test. "
        "No pretrained embeddings."
        + (f" Distilled from {teacher_name(run.distill_from)} (weight {run.distill_weight}, temperature "
           f"{run.distill_temperature})." if run.distill_from else ""),
        save=lambda path: model.save(path, dtype=torch.float16),
        evaluate=evaluate, module=served, run_config=run, progress=progress, device=device,
        data_sha256=data.sha256_of("sst2"), argv=argv, store=run.store)
    log.info("artifact %s: test %s", folder, metrics["test"])
    return {**metrics, "folder": str(folder), "config": asdict(config)}


if __name__ == "__main__":
    main()
