"""Stage 2 trained on composed queries too (``loss.composed``): each training sketch's own
feedback, "a photo of * , and {feedback}", contrasted with its photo."""
from __future__ import annotations

import copy
import json
import logging
import random

import pytest
import torch

from datasets import market_sketch, pku_sketch
from datasets.base import PairDataset, TrainSample
from datasets.captions import FeedbackQuery, clause_pieces
from datasets.synthetic import generate
from engine.stages import TokenStage
from engine.trainer import accumulated_step, train_step
from model.clip import load_clip
from model.token import TokenModel
from model.tokenizer import tokenize
from tests.conftest import run_token
from utils.config import load_config
from utils.errors import ConfigError

CPU = torch.device("cpu")
SENTENCE = ("A teenager man with short hair. He is in black short sleeve clothes, and wears "
            "blue long pants with a backpack.")
TEMPLATE, PROMPT = "a photo of * , and {}", "a photo of *"


def test_feedback_query_draws_every_round_and_only_whole_clauses():
    query = FeedbackQuery(TEMPLATE, PROMPT, "rounds")
    pieces = clause_pieces(SENTENCE)
    assert len(pieces) == 3
    rng = random.Random(0)
    drawn = {query(SENTENCE, rng) for _ in range(200)}
    assert drawn == {TEMPLATE.format(" ".join(pieces[:count])) for count in (1, 2, 3)}
    assert FeedbackQuery(TEMPLATE, PROMPT, "all")(SENTENCE, rng) == TEMPLATE.format(SENTENCE)
    # No feedback: the sketch's own prompt; a stray placeholder in feedback never doubles.
    assert query("", rng) == PROMPT
    assert query("a * sign", rng).count("*") == 1


def test_market_training_sketches_carry_their_persons_sentence(tmp_path):
    generate(tmp_path, datasets=["mask1k"], seed=0, scale=0.2)
    samples = market_sketch.train_samples(tmp_path)
    attributes = market_sketch.read_attributes(
        tmp_path / market_sketch.FOLDER / market_sketch.ATTRIBUTE_FILE)
    for sample in samples:
        pid = market_sketch.person_id(sample.sketch)
        assert sample.feedback == (market_sketch.feedback_sentence(attributes[pid]),)
    # Without the attribute file training still loads, without feedback.
    (tmp_path / market_sketch.FOLDER / market_sketch.ATTRIBUTE_FILE).unlink()
    assert all(not sample.feedback for sample in market_sketch.train_samples(tmp_path))


def test_pku_training_sketches_carry_their_persons_captions(synthetic_root):
    samples = pku_sketch.train_samples(synthetic_root, trial=1, seed=0)
    assert samples and all(sample.feedback and sample.feedback == sample.captions
                           for sample in samples)


def test_pair_dataset_yields_the_tokens_of_a_composed_query(synthetic_root):
    (sample,) = market_sketch.train_samples(synthetic_root)[:1]
    query = FeedbackQuery(TEMPLATE, PROMPT, "all")
    dataset = PairDataset([sample], lambda image: torch.zeros(1), lambda image: torch.zeros(1),
                          feedback_query=query)
    item = dataset[(0, 5)]
    assert torch.equal(item["tokens"], tokenize(query(sample.feedback[0], None))[0])
    # The drawn round is fixed by the item's seed (exact resume, any worker).
    rounds = PairDataset([sample], lambda image: torch.zeros(1), lambda image: torch.zeros(1),
                         feedback_query=FeedbackQuery(TEMPLATE, PROMPT, "rounds"))
    assert all(torch.equal(rounds[(0, seed)]["tokens"], rounds[(0, seed)]["tokens"])
               for seed in range(5))
    assert len({tuple(rounds[(0, seed)]["tokens"].tolist()) for seed in range(40)}) > 1


def _model(clip_path, composed: float) -> TokenModel:
    torch.manual_seed(0)
    clip = load_clip(clip_path, image_size=(32, 16))
    cfg = load_config(None, ["model.middle_dim=32", "model.mapping_dropout=0",
                             f"loss.composed={composed}"])
    return TokenModel(clip, cfg.model, cfg.loss).train()


def _batch(size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    colours = ["red", "blue", "green", "black", "white", "gray", "pink", "brown"]
    return {"photo": torch.randn(size, 3, 32, 16, generator=generator),
            "sketch": torch.randn(size, 3, 32, 16, generator=generator),
            "tokens": tokenize([TEMPLATE.format(f"a man in {colours[i % 8]}")
                                for i in range(size)]),
            "label": torch.arange(size)}


def test_the_composed_term_trains_the_mapping_network_through_the_feedback(tiny_clip_path):
    model = _model(tiny_clip_path, 2.0)
    batch = _batch(8)
    losses = model(batch)
    assert set(losses) == {"inversion_loss", "alignment_loss", "composed_loss"}
    # Its value is the photo <-> composed-query contrast, weighted.
    feats = model.features(batch)
    composed = model.compose(model.clip.encode_image(batch["sketch"]), batch["tokens"])
    torch.testing.assert_close(feats["composed"], composed)
    model.zero_grad()
    losses["composed_loss"].backward()
    assert model.img2text.fc_out.weight.grad.abs().sum() > 0
    assert model.clip.token_embedding.weight.grad is None  # the text tower stays frozen
    # Other feedback, other loss: the feedback reaches the term.
    other = dict(batch, tokens=tokenize([TEMPLATE.format("a woman in a long dress")] * 8))
    assert not torch.allclose(model(other)["composed_loss"], losses["composed_loss"])


def test_the_paper_setting_has_no_composed_term(tiny_clip_path):
    model = _model(tiny_clip_path, 0.0)
    feats = model.features(_batch(8))
    assert "composed" not in feats
    assert set(model.losses(feats)) == {"inversion_loss", "alignment_loss"}


def test_accumulated_composed_steps_equal_one_batch(tiny_clip_path):
    model = _model(tiny_clip_path, 1.0)
    plain, accumulated = model, copy.deepcopy(model)
    batch = _batch(16)
    halves = [{key: value[i * 8:(i + 1) * 8] for key, value in batch.items()} for i in (0, 1)]

    def sgd(m):
        return torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)

    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_step(plain, sgd(plain), scaler, batch, {}, CPU, None)
    accumulated_step(accumulated, sgd(accumulated), scaler, halves, {}, CPU, None)
    for (name, one), (_, two) in zip(plain.named_parameters(), accumulated.named_parameters()):
        torch.testing.assert_close(one, two, rtol=1e-4, atol=1e-6, msg=name)


def _stage_cfg(composed: float, clauses: str = "rounds"):
    return load_config(None, ["data.dataset=mask1k", f"loss.composed={composed}",
                              f"loss.composed_clauses={clauses}"])


def test_stage2_turns_the_term_off_without_feedback(caplog):
    samples = [TrainSample(0, ("p.jpg",), "s.jpg")]
    cfg = _stage_cfg(1.0)
    with caplog.at_level(logging.WARNING):
        assert TokenStage().usable_samples(cfg, samples) == samples
    assert cfg.loss.composed == 0.0
    assert "loss.composed=1 turned off" in caplog.text


def test_stage2_leaves_out_sketches_without_feedback_and_checks_the_clauses(caplog):
    with_words = TrainSample(0, ("p.jpg",), "s.jpg", feedback=("a man",))
    without = TrainSample(1, ("q.jpg",), "t.jpg")
    with caplog.at_level(logging.WARNING):
        assert TokenStage().usable_samples(_stage_cfg(1.0), [with_words, without]) == [with_words]
    assert "1 of 2 training sketches have no feedback" in caplog.text
    with pytest.raises(ConfigError, match="loss.composed_clauses='some' is not one of"):
        TokenStage().usable_samples(_stage_cfg(1.0, "some"), [with_words])
    # The paper's setting keeps every sketch, feedback or not.
    assert TokenStage().usable_samples(_stage_cfg(0.0), [with_words, without]) == [
        with_words, without]


def test_a_composed_run_logs_the_term_and_evaluates(tiny_clip_path, synthetic_root, stage1_run,
                                               tmp_path):
    out = tmp_path / "composed"
    run_token(tiny_clip_path, synthetic_root, out, stage1_run,
              **{"loss.composed": 1.0, "log.every_steps": 1})
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()
               if line.strip()]
    assert records and all(set(record["losses"]) == {"inversion_loss", "alignment_loss",
                                                      "composed_loss"} for record in records)
    assert load_config(out / "config.yaml", []).loss.composed == 1.0
    assert "interactive" in (out / "metrics.jsonl").read_text()
