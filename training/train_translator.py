"""Train the many-to-many model: attention seq2seq translation, de->en (Multi30k) or ko->en (Tatoeba).

    python -m training.train_translator --pair de-en
    python -m training.train_translator --pair ko-en
    torchrun --nproc_per_node=2 -m training.train_translator --profile quick

Selected on validation BLEU (greedy), reported on test with greedy and beam search.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from models.rnn import CELLS
from models.text import normalize_translation
from models.translator import ATTENTIONS, Seq2Seq, Translator, TranslatorConfig
from models.vocab import BOS_ID, EOS_ID, PAD_ID
from training import artifact_writer, batching, checkpoints, data, devices, flags, loop
from training.evaluate import translation_bleu
from training.flags import help_field
from training.subwords import train_sentencepiece

log = logging.getLogger(__name__)

PAIRS = {"de-en": ("translator-de-en", "multi30k"), "ko-en": ("translator-ko-en", "kor_eng_tatoeba")}


@dataclass
class RunConfig(flags.CommonRun):
    pair: str = help_field("de-en", "language pair", choices=tuple(PAIRS))
    cell: str = help_field("gru", "recurrent cell", choices=CELLS)
    attention: str = help_field("additive", "attention score", choices=ATTENTIONS)
    source_vocab: int = help_field(8000, "sentencepiece pieces, source language", minimum=16)
    target_vocab: int = help_field(8000, "sentencepiece pieces, target language", minimum=16)
    character_coverage: float = help_field(1.0, "share of source characters sentencepiece keeps "
                                           "(rarer ones become <unk>; 0.9995 suits Korean)",
                                           minimum=0.9)
    embedding_dim: int = help_field(256, "piece embedding size", minimum=1)
    hidden_size: int = help_field(256, "encoder units per direction (decoder: twice)", minimum=1)
    num_layers: int = help_field(1, "stacked recurrent layers", minimum=1)
    attention_size: int = help_field(256, "additive attention size", minimum=1)
    dropout: float = help_field(0.3, "dropout", minimum=0.0, maximum=1.0)
    label_smoothing: float = help_field(0.1, "label smoothing of the loss", minimum=0.0)
    epochs: int = help_field(6, "maximum epochs", minimum=1)
    patience: int = help_field(2, "stop after this many epochs without a better val BLEU", minimum=1)
    batch_size: int = help_field(128, "sentence pairs per step (per process under torchrun)",
                                 minimum=1)
    lr: float = help_field(2e-3, "Adam learning rate, halved when val BLEU stalls", minimum=0.0)
    clip: float = help_field(1.0, "gradient norm clip", minimum=0.0)
    max_pieces: int = help_field(80, "drop training pairs longer than this many pieces", minimum=2)
    train_limit: int = help_field(0, "use only the first N training pairs (0 = all)", minimum=0)
    val_limit: int = help_field(0, "validate on the first N pairs (0 = all)", minimum=0)
    test_beam: int = help_field(5, "beam size for the beam-search test score", minimum=1)


PROFILES = {
    "full": {},
    # Tatoeba ko-en has ~5.7k pairs: fewer pieces, more epochs
    "full-ko": {"source_vocab": 2000, "target_vocab": 2000, "character_coverage": 0.9995,
                "epochs": 40, "patience": 4, "batch_size": 64},
    "quick": {"epochs": 1, "train_limit": 2000, "val_limit": 100, "source_vocab": 500,
              "target_vocab": 500, "embedding_dim": 64, "hidden_size": 64, "attention_size": 64,
              "test_beam": 2},
}


def splits_for(pair: str) -> dict[str, list[tuple[str, str]]]:
    return data.multi30k_splits() if pair == "de-en" else data.ko_en_splits()


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = flags.parse_config(RunConfig, argv, PROFILES, __doc__.splitlines()[0])
    name, dataset = PAIRS[run.pair]
    source_lang, target_lang = run.pair.split("-")
    device = devices.resolve_device(run.device)
    rank, world = devices.init_distributed(device)
    devices.seed_everything(run.seed)

    splits = splits_for(run.pair)
    train = splits["train"][: run.train_limit or None]
    val = splits["val"][: run.val_limit or None]
    source_spm = train_sentencepiece((normalize_translation(s) for s, _ in train), run.source_vocab,
                                     character_coverage=run.character_coverage)
    target_spm = train_sentencepiece((normalize_translation(t) for _, t in train), run.target_vocab)
    config = TranslatorConfig(
        source_vocab_size=source_spm.get_piece_size(), target_vocab_size=target_spm.get_piece_size(),
        source_lang=source_lang, target_lang=target_lang, embedding_dim=run.embedding_dim,
        hidden_size=run.hidden_size, num_layers=run.num_layers, cell=run.cell,
        attention=run.attention, attention_size=run.attention_size, dropout=run.dropout)
    module = Seq2Seq(config).to(device)
    model = Translator(module, source_spm, target_spm)
    sources = [model.encode_source(s) for s, _ in train]
    targets = [target_spm.encode(normalize_translation(t)) for _, t in train]
    keep = [i for i in range(len(train))
            if len(sources[i]) <= run.max_pieces and len(targets[i]) + 1 <= run.max_pieces]
    sources, targets = [sources[i] for i in keep], [targets[i] for i in keep]
    log.info("%d training pairs (%d too long dropped), vocab %d/%d, %d parameters", len(keep),
             len(train) - len(keep), config.source_vocab_size, config.target_vocab_size,
             sum(p.numel() for p in module.parameters()))

    ddp = devices.wrap_ddp(module, device, world)
    optimizer = torch.optim.Adam(module.parameters(), lr=run.lr)
    checkpoint_dir = run.checkpoints(name)
    progress = checkpoints.resume_or_start(run, checkpoint_dir, module, optimizer)
    epochs = batching.epoch_batches([len(s) for s in sources], run.batch_size, run.seed, rank, world,
                                    progress.epoch)

    def batch_loss(batch: list[int]) -> torch.Tensor:
        source, lengths = model.collate([sources[i] for i in batch])
        # decoder input BOS + y, output y + EOS; padding is ignored by the loss
        target_in, _ = model.collate([[BOS_ID, *targets[i]] for i in batch])
        target_out, _ = model.collate([[*targets[i], EOS_ID] for i in batch])
        logits = ddp(source.to(device), lengths, target_in.to(device))  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), target_out.to(device).flatten(),
                               ignore_index=PAD_ID, label_smoothing=run.label_smoothing)

    while progress.epoch < run.epochs and progress.bad_epochs < run.patience:
        timer = loop.Timer()
        train_loss = loop.train_epoch(next(epochs), batch_loss, optimizer, module, run.clip,
                                      progress, rank,
                                      precision=run.step_precision(device))
        module.eval()
        bleu = translation_bleu(model, val)["bleu"]
        best = checkpoints.end_epoch(progress, {"train_loss": train_loss, "val_bleu": bleu},
                                     bleu, True, timer.elapsed(), checkpoint_dir, module, optimizer, rank)
        if not best:
            for group in optimizer.param_groups:
                group["lr"] /= 2
        log.info("epoch %d: train loss %.4f, val BLEU %.2f%s (%.0f s)", progress.epoch,
                 train_loss, bleu, " (best)" if best else "", timer.elapsed())
    if not checkpoints.end_training(world, rank, checkpoint_dir, module):
        return {}

    def evaluate(folder: Path) -> tuple[dict, dict]:
        shipped = Translator.load(folder)
        greedy = translation_bleu(shipped, splits["test"], beam_size=1)
        beam = translation_bleu(shipped, splits["test"], beam_size=run.test_beam)
        test = {**beam, "beam_size": run.test_beam, "bleu_greedy": greedy["bleu"],
                "bleu_lowercase_greedy": greedy["bleu_lowercase"]}
        return translation_bleu(shipped, val), test

    spec = artifact_writer.ArtifactSpec(
        name=name, task="translator", cell=run.cell,
        summary=f"Many-to-many {source_lang}->{target_lang} translator: bidirectional "
        f"{run.cell.upper()} encoder, {run.attention} attention over the encoder outputs (masked on "
        f"padding), {run.cell.upper()} decoder, sentencepiece unigram pieces for both languages. "
        f"BLEU is sacreBLEU (13a) on detokenised output against the raw references.",
        data_sha256=data.sha256_of(dataset), model=model, evaluate=evaluate)
    folder, metrics = artifact_writer.finish_artifact(spec, run, progress, device, argv)
    log.info("artifact %s: test %s", folder, metrics["test"])
    return {**metrics, "folder": str(folder)}


if __name__ == "__main__":
    main()
