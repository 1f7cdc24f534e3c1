"""models.generator: the step API equals the whole-sequence pass; sampling is per-row reproducible."""

from __future__ import annotations

import pytest
import torch

from models.generator import (
    EMPTY_PROMPT,
    CharGenerator,
    CharLM,
    CharLMConfig,
    check_sampling,
    clamp_top_k,
    sample_next,
    sampled_log_probs,
    sampling_logits,
)
from models.rnn import CELLS
from models.vocab import SPECIALS, UNK_ID

from support.tiny_models import make_tiny_generator


@pytest.fixture(scope="module", params=CELLS)
def generator(request) -> CharGenerator:
    return make_tiny_generator(cell=request.param)


@torch.inference_mode()
def test_step_by_step_equals_whole_sequence(generator):
    model = generator.module
    tokens = torch.tensor([generator.encode("Hello, world!"), generator.encode("Another line.")])  # (2, T)
    whole_logits, whole_state = model(tokens)
    state = model.init_state(tokens.shape[0])
    step_logits = []
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)  # (B, V)
        step_logits.append(logits)
    torch.testing.assert_close(torch.stack(step_logits, dim=1), whole_logits, rtol=1e-5, atol=1e-6)
    assert len(state) == len(whole_state) == (2 if model.config.cell == "lstm" else 1)
    for part, whole in zip(state, whole_state, strict=True):
        torch.testing.assert_close(part, whole, rtol=1e-5, atol=1e-6)


@torch.inference_mode()
def test_a_state_continues_a_sequence(generator):
    # prime on a prefix, then feed the rest: same as running the whole text at once
    model = generator.module
    ids = torch.tensor([generator.encode("Hello there")])
    whole, _ = model(ids)
    _, state = model(ids[:, :5])
    rest, _ = model(ids[:, 5:], state)
    torch.testing.assert_close(rest, whole[:, 5:], rtol=1e-5, atol=1e-6)


def test_same_seed_same_text_different_seed_different_text(generator):
    first = generator.generate("The ", 40, temperature=1.0, seed=11)
    assert len(first) == 40
    assert generator.generate("The ", 40, temperature=1.0, seed=11) == first
    # 40 draws from an untrained (near-uniform) model over ~60 characters: equal only by a miracle
    assert generator.generate("The ", 40, temperature=1.0, seed=12) != first


def test_sample_next_never_emits_specials():
    vocab = 12
    logits = torch.zeros(256, vocab)
    logits[:, : len(SPECIALS)] = 50.0  # the specials are by far the likeliest
    generators = [torch.Generator().manual_seed(i) for i in range(256)]
    tokens = sample_next(logits, torch.full((256,), 2.0), torch.zeros(256, dtype=torch.long), generators)
    assert tokens.shape == (256,)
    assert int(tokens.min()) >= len(SPECIALS)
    # and top-k counts only the tokens it may emit
    tokens = sample_next(logits, torch.ones(256), torch.full((256,), 3), generators)
    assert int(tokens.min()) >= len(SPECIALS)


def test_top_k_one_is_argmax():
    torch.manual_seed(0)
    logits = torch.randn(8, 20)
    logits[:, : len(SPECIALS)] += 10.0
    tokens = sample_next(logits, torch.full((8,), 1.5), torch.ones(8, dtype=torch.long),
                         [torch.Generator().manual_seed(i) for i in range(8)])
    expected = logits[:, len(SPECIALS):].argmax(dim=-1) + len(SPECIALS)
    assert torch.equal(tokens, expected)


def test_top_k_draws_only_from_the_k_likeliest():
    torch.manual_seed(0)
    logits = torch.randn(1, 30).expand(300, 30)
    allowed = set((logits[0, len(SPECIALS):].topk(3).indices + len(SPECIALS)).tolist())
    tokens = sample_next(logits, torch.full((300,), 5.0), torch.full((300,), 3),
                         [torch.Generator().manual_seed(i) for i in range(300)])
    assert set(tokens.tolist()) == allowed


def test_a_rows_sample_depends_only_on_its_own_generator():
    torch.manual_seed(0)
    logits = torch.randn(4, 25)
    temperature = torch.tensor([0.5, 1.0, 1.5, 2.0])
    top_k = torch.tensor([0, 5, 0, 2])
    seeds = [3, 1, 4, 1]
    batched_gens = [torch.Generator().manual_seed(s) for s in seeds]
    alone_gens = [torch.Generator().manual_seed(s) for s in seeds]
    for _ in range(10):  # several draws: each generator advances only by its own row
        batched = sample_next(logits, temperature, top_k, batched_gens)
        for row in range(4):
            alone = sample_next(logits[row: row + 1], temperature[row: row + 1], top_k[row: row + 1],
                                [alone_gens[row]])
            assert int(alone) == int(batched[row])


def test_seeded_rows_ignore_unseeded_neighbours():
    torch.manual_seed(0)
    logits = torch.randn(3, 25)
    ones, zeros = torch.ones(3), torch.zeros(3, dtype=torch.long)
    torch.manual_seed(123)
    draws_a = [int(sample_next(logits, ones, zeros, [None, torch.Generator().manual_seed(5), None])[1])
               for _ in range(5)]
    torch.manual_seed(456)  # the neighbours draw from the global RNG, which is now different
    draws_b = [int(sample_next(logits, ones, zeros, [None, torch.Generator().manual_seed(5), None])[1])
               for _ in range(5)]
    assert draws_a == draws_b


def test_empty_prompt_starts_after_a_blank_line(tiny_generator):
    assert tiny_generator.encode("") == tiny_generator.encode(EMPTY_PROMPT)
    text = tiny_generator.generate("", 15, seed=0)
    assert len(text) == 15


def test_unknown_prompt_characters_map_to_unk(tiny_generator):
    assert tiny_generator.encode("é日") == [UNK_ID, UNK_ID]
    known = tiny_generator.encode("ab")
    assert UNK_ID not in known
    assert tiny_generator.encode("aé") == [known[0], UNK_ID]
    assert len(tiny_generator.generate("☃ é", 5, seed=0)) == 5


def test_decode_inverts_encode(tiny_generator):
    text = "Hello, World!\nNew line - ok?"
    assert tiny_generator.decode(tiny_generator.encode(text)) == text


def test_weight_drop_acts_in_training_only():
    torch.manual_seed(0)
    config = CharLMConfig(vocab_size=9, embedding_dim=4, hidden_size=8, num_layers=2, dropout=0.0)
    plain = CharLM(config)
    dropped = CharLM(CharLMConfig(**{**config.__dict__, "weight_drop": 0.5}))
    dropped.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 9, (3, 6))
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped(tokens)[0], plain(tokens)[0])  # served: the full weights
    plain.train(), dropped.train()
    assert not torch.allclose(dropped(tokens)[0], plain(tokens)[0])


@pytest.mark.parametrize("temperature", [0.0, 1e-45, 1e-300])
def test_a_temperature_at_or_near_zero_takes_the_likeliest_and_draws_nothing(temperature):
    torch.manual_seed(0)
    logits = torch.randn(6, 20) * 30
    generators = [torch.Generator().manual_seed(i) for i in range(6)]
    before = [g.get_state() for g in generators]
    tokens = sample_next(logits, torch.tensor([temperature] * 6), torch.zeros(6, dtype=torch.long),
                         generators)
    assert torch.equal(tokens, logits[:, len(SPECIALS):].argmax(dim=-1) + len(SPECIALS))
    assert all(torch.equal(g.get_state(), b) for g, b in zip(generators, before, strict=True))


def test_a_row_with_a_tiny_temperature_leaves_its_batchmates_draws_unchanged():
    torch.manual_seed(0)
    logits = torch.randn(3, 20)
    alone = [sample_next(logits[row:row + 1], torch.tensor([0.8]), torch.tensor([0]),
                         [torch.Generator().manual_seed(row)]) for row in (0, 2)]
    batched = sample_next(logits, torch.tensor([0.8, 1e-40, 0.8]), torch.zeros(3, dtype=torch.long),
                          [torch.Generator().manual_seed(row) for row in range(3)])
    assert batched[0] == alone[0] and batched[2] == alone[1]


@pytest.mark.parametrize("bad", ["nan_logits", "inf_logits", "negative_temperature", "nan_temperature"])
def test_a_row_that_cannot_be_sampled_raises_before_any_row_draws(bad):
    logits = torch.zeros(3, 20)
    temperature = torch.ones(3)
    if bad == "nan_logits":
        logits[1, 7] = float("nan")
    elif bad == "inf_logits":
        logits[1, 7] = float("inf")
    elif bad == "negative_temperature":
        temperature[1] = -1.0
    else:
        temperature[1] = float("nan")
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    before = [g.get_state() for g in generators]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        sample_next(logits, temperature, torch.zeros(3, dtype=torch.long), generators)
    assert all(torch.equal(g.get_state(), b) for g, b in zip(generators, before, strict=True))


def test_any_top_k_at_least_the_vocabulary_means_all_of_it(generator):
    vocab = generator.module.config.vocab_size
    assert clamp_top_k(3, vocab) == 3
    assert clamp_top_k(vocab, vocab) == clamp_top_k(10**30, vocab) == 0
    text = generator.generate("To be", 30, 0.9, 0, seed=4)
    assert generator.generate("To be", 30, 0.9, 10**30, seed=4) == text
    assert generator.generate("To be", 30, 0.9, vocab, seed=4) == text


@pytest.mark.parametrize(("temperature", "top_k"), [(-0.1, 0), (float("nan"), 0), (float("inf"), 0),
                                                    (0.8, -1)])
def test_options_no_model_can_honour_are_refused(generator, temperature, top_k):
    with pytest.raises(ValueError, match="temperature" if top_k == 0 else "top_k"):
        check_sampling(temperature, top_k)
    with pytest.raises(ValueError):
        generator.generate("a", 3, temperature, top_k, seed=1)


# -- log-probabilities and scoring ----------------------------------------------------------------


def test_sampled_log_probs_are_those_of_the_distribution_sampled_from():
    torch.manual_seed(0)
    logits = torch.randn(3, 12)
    temperature, top_k = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0, 3, 0])
    probs = torch.softmax(sampling_logits(logits, temperature, top_k)[0], dim=-1)
    tokens = sample_next(logits, temperature, top_k, [torch.Generator().manual_seed(i) for i in range(3)])
    chosen, top_values, top_ids = sampled_log_probs(logits, temperature, top_k, tokens, 5)
    assert torch.allclose(chosen.exp(), probs.gather(1, tokens[:, None])[:, 0])
    assert torch.allclose(top_values.exp(), probs.topk(5, dim=-1).values)
    # top-k 3: the other alternatives are impossible, specials always are
    assert torch.isinf(top_values[1, 3:]).all() and torch.isfinite(top_values[1, :3]).all()
    assert not (top_ids[0] < len(SPECIALS)).any()


def test_log_prob_entries_list_only_possible_alternatives(tiny_generator):
    logits, _ = tiny_generator.prime("to be")
    temperature, top_k = torch.tensor([0.7]), torch.tensor([2])
    token = sample_next(logits[None], temperature, top_k, [torch.Generator().manual_seed(1)])
    [entry] = tiny_generator.log_prob_entries(logits[None], temperature, top_k, token, 5)
    assert entry["char"] == tiny_generator.decode(token.tolist())
    assert len(entry["top"]) == 2  # top_k 2 leaves two characters possible
    assert entry["char"] in [t["char"] for t in entry["top"]]
    assert entry["logprob"] <= 0 and entry["top"][0]["logprob"] >= entry["top"][1]["logprob"]


def test_score_is_the_surprisal_of_each_character_after_the_prompt(tiny_generator):
    prompt, text = "ab", "cd e"
    surprisal = tiny_generator.score(text, prompt)
    assert len(surprisal) == len(text)
    ids = tiny_generator.encode(prompt + text)
    with torch.inference_mode():
        logits, _ = tiny_generator.module(torch.tensor([ids]))  # (1, S, V)
    for j, value in enumerate(surprisal):
        position = len(prompt) + j - 1
        distribution, _ = sampling_logits(logits[:, position], torch.ones(1),
                                          torch.zeros(1, dtype=torch.long))
        expected = -torch.log_softmax(distribution, -1)[0, ids[position + 1]]
        assert value == pytest.approx(float(expected), abs=1e-5)


def test_score_equals_the_log_probs_of_a_seeded_generation_at_temperature_1(tiny_generator):
    text = tiny_generator.generate("the ", max_tokens=40, temperature=1.0, top_k=0, seed=5)
    logits, state = tiny_generator.prime("the ")
    log_probs = []
    with torch.inference_mode():
        for char in text:
            token = torch.tensor(tiny_generator.encode(char))
            chosen, _, _ = sampled_log_probs(logits.reshape(1, -1), torch.ones(1),
                                             torch.zeros(1, dtype=torch.long), token, 1)
            log_probs.append(float(chosen[0]))
            logits, state = tiny_generator.module.step(token, state)
    assert [-s for s in tiny_generator.score(text, "the ")] == pytest.approx(log_probs, abs=1e-4)


def test_score_gives_none_for_characters_outside_the_vocabulary(tiny_generator):
    surprisal = tiny_generator.score("a\u00e9b", "")
    assert surprisal[1] is None and surprisal[0] is not None and surprisal[2] is not None


def test_scoring_in_a_batch_equals_scoring_alone(tiny_generator):
    pairs = (("", "a"), ("hello ", "world, and more"), ("x", "yz"))
    jobs = [tiny_generator.score_job(prompt, text) for prompt, text in pairs]
    with torch.inference_mode():
        together = tiny_generator.score_ids(jobs)
        alone = [tiny_generator.score_ids([job])[0] for job in jobs]
    for batched, single in zip(together, alone, strict=True):
        assert batched == pytest.approx(single, abs=1e-5)
