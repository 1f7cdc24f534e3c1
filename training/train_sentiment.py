"""Train the many-to-one model: SST-2 (+ FDU-MTL) sentiment, selected on dev, reported on test.

    python -m training.train_sentiment --cell lstm
    python -m training.train_sentiment --data sst2 --normalizer 1 --max-tokens 0   # SST-2 only
    python -m training.train_sentiment --hidden-size 176 --init-from models/pretrained/sentiment-rnn
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
from models.sentiment import SentimentClassifier, SentimentConfig, SentimentRNN, truncate_tokens
from models.text import LATEST_NORMALIZER, NORMALIZERS, sentiment_tokens
from models.vocab import Vocab
from training import artifact_writer, batching, checkpoints, data, devices, flags, loop, store
from training.evaluate import domain_accuracy, selection_metric, sentiment_accuracy
from training.flags import help_field

log = logging.getLogger(__name__)

NAME = "sentiment-rnn"
DATA_CHOICES = ("sst2", "sst2+fdu_mtl")


@dataclass
class RunConfig(flags.CommonRun):
    cell: str = help_field("lstm", "recurrent cell", choices=CELLS)
    embedding_dim: int = help_field(300, "word embedding size", minimum=1)
    hidden_size: int = help_field(256, "hidden units per direction", minimum=1)
    num_layers: int = help_field(1, "stacked recurrent layers", minimum=1)
    dropout: float = help_field(0.5, "dropout on embeddings and pooled features", minimum=0.0,
                                maximum=1.0)
    weight_drop: float = flags.weight_drop_field(0.3)
    subword_buckets: int = help_field(16384, "hash table size for character 3-5-gram embeddings added "
                                      "to each word's (0 = words only)", minimum=0)
    min_freq: int = help_field(2, "keep words seen at least this often in train", minimum=1)
    max_vocab: int = help_field(15500, "most words in the vocabulary, specials included (the "
                                "rest read as UNK plus their subwords); bounds the artifact's size: "
                                "at 300 dimensions and 16,384 subword buckets, 15,500 words keep "
                                "models/pretrained/ within its 60 MB and 16,000 do not "
                                "(0 = no cap)", minimum=0)
    data: str = help_field("sst2+fdu_mtl", "training sets: SST-2 phrases, plus FDU-MTL's 14 "
                           "product-review domains", choices=DATA_CHOICES)
    fdu_repeat: int = help_field(1, "with FDU-MTL, how many times each FDU-MTL training review "
                                 "is seen per epoch (SST-2 phrases once)", minimum=1)
    normalizer: int = help_field(LATEST_NORMALIZER, "models.text normaliser version the model "
                                 "reads text with (saved in its config)", choices=NORMALIZERS)
    max_tokens: int = help_field(256, "texts longer than this keep their first and last half of "
                                 "it, in training and serving (saved in the config; 0 = all)",
                                 minimum=0)
    init_from: str = help_field("", "a trained sentiment artifact folder to start from: every "
                                "weight of matching shape, and the embedding rows of the words "
                                "both vocabularies hold ('' = random init)")
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
    train_limit: int = help_field(0, "use only the first N training phrases, and N FDU-MTL "
                                  "reviews (0 = all)", minimum=0)
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
              "weight_drop": 0.0, "max_tokens": 64,
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


def init_from(folder: str, module: SentimentRNN, vocab: Vocab) -> None:
    """Warm start: copy a trained artifact's weights of matching shape into `module`, and its
    embedding rows for every word of `vocab` that its own vocabulary holds (the other rows keep
    their random init, and their subwords already carry meaning)."""
    source = SentimentClassifier.load(folder)
    if source.module.config.embedding_dim != module.config.embedding_dim:
        raise SystemExit(f"--init-from {folder}: its embedding_dim is "
                         f"{source.module.config.embedding_dim}, this run's "
                         f"{module.config.embedding_dim}: pass --embedding-dim to match")
    own = module.state_dict()
    copied = []
    with torch.no_grad():
        for key, value in source.module.state_dict().items():
            if key in own and key != "embedding.weight" and own[key].shape == value.shape:
                own[key].copy_(value.float())
                copied.append(key)
        rows = [(i, source.vocab.stoi[word]) for i, word in enumerate(vocab.itos)
                if word in source.vocab.stoi]
        target, origin = (torch.tensor(ids) for ids in zip(*rows, strict=True))
        module.embedding.weight[target] = source.module.embedding.weight[origin].float()
    log.info("initialised from %s: %d of %d tensors, %d of %d embedding rows", folder, len(copied),
             len(own) - 1, len(rows), len(vocab))


def training_pairs(run: RunConfig, sst2_train: list[tuple[str, int]],
                   fdu_train: dict[str, list[tuple[str, int]]]) -> list[tuple[str, int]]:
    """SST-2 phrases, then (with FDU-MTL) every domain's reviews `fdu_repeat` times over."""
    limit = run.train_limit or None
    pairs = sst2_train[:limit]
    if run.data == "sst2+fdu_mtl":
        reviews = [pair for domain in sorted(fdu_train) for pair in fdu_train[domain]]
        random_order = torch.randperm(len(reviews), generator=torch.Generator().manual_seed(run.seed))
        reviews = [reviews[i] for i in random_order.tolist()][:limit]
        pairs = pairs + reviews * run.fdu_repeat
    return pairs


def dev_scores(model: SentimentClassifier, sst2_dev: list[tuple[str, int]],
               fdu_dev: dict[str, list[tuple[str, int]]]) -> dict[str, float]:
    """Selection metrics on dev: SST-2 dev accuracy, the mean over FDU-MTL domains of their dev
    accuracy, and `selection`, the mean of the two (each set counts the same, whatever its size),
    which picks the epoch; SST-2 alone when there is no FDU-MTL dev."""
    scores = {"sst2_accuracy": sentiment_accuracy(model, sst2_dev)["accuracy"]}
    if fdu_dev:
        scores["fdu_mean_accuracy"] = domain_accuracy(model, fdu_dev)["mean"]
        scores["selection"] = selection_metric(scores["sst2_accuracy"], scores["fdu_mean_accuracy"])
    else:
        scores["selection"] = scores["sst2_accuracy"]
    return scores


# What users send that no training set of this model covers: the model card names it.
UNSEEN_DOMAINS = ("tweets and other social-media posts", "restaurant and local-business reviews "
                  "(Yelp)", "support messages and complaints", "news and opinion articles",
                  "product categories outside the FDU-MTL 14", "any language but English")


def card_summary(run: RunConfig, config: SentimentConfig) -> str:
    """The model card's opening: what the network is, what it was trained on and what not."""
    with_fdu = run.data == "sst2+fdu_mtl"
    architecture = (
        "Many-to-one sentiment classifier: word embedding"
        + (f" + mean of hashed character {config.subword_min_n}-{config.subword_max_n}-gram "
           f"embeddings ({config.subword_buckets} buckets)" if config.subword_buckets else "")
        + f" -> bidirectional {run.cell.upper()} over packed sequences -> max+mean pooling -> "
        f"linear. Text read with normaliser {config.normalizer} (models.text)"
        + (f", at most {config.max_tokens} tokens (the first and last {config.max_tokens // 2} of "
           "a longer text)." if config.max_tokens else ", every token."))
    trained = ("\n\n## Domains\n\nTrained on: movie reviews (GLUE SST-2 phrases)"
               + (", and Amazon product reviews of the 14 FDU-MTL domains: "
                  + ", ".join(d.replace("_", " ") for d in data.FDU_DOMAINS)
                  + f" (each FDU-MTL review seen {run.fdu_repeat}x per epoch)" if with_fdu else "")
               + ".\n\nNot trained on: " + ("" if with_fdu else "product reviews, ")
               + ", ".join(UNSEEN_DOMAINS) + ". Expect lower accuracy there.\n\n"
               + ("Selected on the mean of SST-2 dev accuracy and the FDU-MTL dev accuracy "
                  "(a seeded share of each domain's train reviews) averaged over its 14 domains; "
                  "tested on stsa.binary.test and the FDU-MTL test files."
                  if with_fdu else "Selected on the SST-2 dev set, tested on stsa.binary.test.")
               + " No pretrained embeddings."
               + (f" Initialised from {teacher_name(run.init_from)}." if run.init_from else "")
               + (f" Distilled from {teacher_name(run.distill_from)} (weight {run.distill_weight}, "
                  f"temperature {run.distill_temperature})." if run.distill_from else ""))
    return architecture + trained


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = flags.parse_config(RunConfig, argv, PROFILES, __doc__.splitlines()[0])
    device = devices.resolve_device(run.device)
    rank, world = devices.init_distributed(device)
    devices.seed_everything(run.seed)

    splits = data.sst2_splits()
    fdu = data.fdu_mtl_splits() if run.data == "sst2+fdu_mtl" else {"train": {}, "dev": {},
                                                                    "test": {}}
    train = training_pairs(run, splits["train"], fdu["train"])
    unique = dict.fromkeys(text for text, _ in train)  # fdu_repeat must not count a word twice
    vocab = Vocab.build((truncate_tokens(sentiment_tokens(text, run.normalizer), run.max_tokens)
                         for text in unique), min_freq=run.min_freq, max_size=run.max_vocab or None)
    config = SentimentConfig(vocab_size=len(vocab), embedding_dim=run.embedding_dim,
                             hidden_size=run.hidden_size, num_layers=run.num_layers, cell=run.cell,
                             dropout=run.dropout, weight_drop=run.weight_drop,
                             subword_buckets=run.subword_buckets, normalizer=run.normalizer,
                             max_tokens=run.max_tokens)
    module = SentimentRNN(config)
    if run.init_from:
        init_from(run.init_from, module, vocab)
    module = module.to(device)
    averaged, served, saved = loop.weight_average(module, run.ema)
    model = SentimentClassifier(served, vocab)
    encoded = [model.encode(text) for text, _ in train]
    labels = torch.tensor([label for _, label in train])
    teacher = teacher_logits(run.distill_from, [text for text, _ in train]) if run.distill_from else None
    log.info("%d training texts (%s), vocab %d, %d parameters", len(train), run.data, len(vocab),
             sum(p.numel() for p in module.parameters()))

    ddp = devices.wrap_ddp(module, device, world)
    optimizer = torch.optim.Adam(module.parameters(), lr=run.lr, weight_decay=run.weight_decay)
    checkpoint_dir = run.checkpoints(NAME)
    progress = checkpoints.resume_or_start(run, checkpoint_dir, saved, optimizer)
    epochs = batching.epoch_batches([len(s) for s in encoded], run.batch_size, run.seed, rank, world,
                                    progress.epoch)

    def batch_loss(batch: list[int]) -> torch.Tensor:
        inputs = SentimentClassifier.collate([encoded[i] for i in batch]).to(device)
        logits = ddp(inputs.tokens, inputs.lengths, inputs.subwords)
        if teacher is None:
            return F.cross_entropy(logits, labels[batch].to(device))
        return distillation_loss(logits, labels[batch].to(device), teacher[batch].to(device),
                                 run.distill_weight, run.distill_temperature)

    while progress.epoch < run.epochs and progress.bad_epochs < run.patience:
        timer = loop.Timer()
        train_loss = loop.train_epoch(next(epochs), batch_loss, optimizer, module, run.clip,
                                      progress, rank, averaged,
                                      precision=run.step_precision(device))
        served.eval()
        dev = dev_scores(model, splits["dev"], fdu["dev"])
        best = checkpoints.end_epoch(progress, {"train_loss": train_loss,
                                                **{f"dev_{k}": v for k, v in dev.items()}},
                                     dev["selection"], True, timer.elapsed(), checkpoint_dir, saved,
                                     optimizer, rank)
        log.info("epoch %d: train loss %.4f, dev %s%s (%.0f s)", progress.epoch, train_loss, dev,
                 " (best)" if best else "", timer.elapsed())
    if not checkpoints.end_training(world, rank, checkpoint_dir, saved):
        return {}

    def evaluate(folder: Path) -> tuple[dict, dict]:
        shipped = SentimentClassifier.load(folder)
        test = sentiment_accuracy(shipped, splits["test"])
        if fdu["test"]:
            by_domain = domain_accuracy(shipped, fdu["test"])
            test = {**test, "fdu_mean_accuracy": by_domain.pop("mean"),
                    **{f"fdu_{domain}": value for domain, value in by_domain.items()}}
        return dev_scores(shipped, splits["dev"], fdu["dev"]), test

    spec = artifact_writer.ArtifactSpec(
        name=NAME, task="sentiment", cell=run.cell, summary=card_summary(run, config),
        data_sha256={**data.sha256_of("sst2"),
                     **(data.sha256_of("fdu_mtl") if run.data == "sst2+fdu_mtl" else {})},
        model=model, evaluate=evaluate)
    folder, metrics = artifact_writer.finish_artifact(spec, run, progress, device, argv)
    log.info("artifact %s: test %s", folder, metrics["test"])
    return {**metrics, "folder": str(folder), "config": asdict(config)}


if __name__ == "__main__":
    main()
