"""Gradient accumulation with feature caching: K micro-batches of B give the step of one
batch of K x B (the contrastive batch is what matters), with dropout replayed exactly."""
from __future__ import annotations

import copy

import pytest
import torch
from easydict import EasyDict

from datasets.sampler import EpochSampler
from engine.trainer import accumulated_step, accumulation_steps, train_step
from model.adapt import AdaptModel
from model.clip import load_clip
from model.token import TokenModel
from model.tokenizer import tokenize
from utils.config import defaults, load_config
from utils.errors import ConfigError

CPU = torch.device("cpu")
COLOURS = ["red", "blue", "green", "black", "white", "gray", "pink", "brown"]


def _batch(size: int, seed: int = 0, view: bool = False) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch = {"photo": torch.randn(size, 3, 32, 16, generator=generator),
             "sketch": torch.randn(size, 3, 32, 16, generator=generator),
             "tokens": tokenize([f"a person in a {COLOURS[i % 8]} coat and {COLOURS[i // 8 % 8]}"
                                 f" shoes" for i in range(size)]),
             # Repeated people, so that identity targets spread over several columns.
             "label": torch.randint(0, size // 3, (size,), generator=generator)}
    if view:
        batch["photo_view"] = torch.randn(size, 3, 32, 16, generator=generator)
    return batch


def _split(batch: dict, parts: int) -> list:
    size = batch["label"].shape[0] // parts
    return [{key: value[i * size:(i + 1) * size] for key, value in batch.items()}
            for i in range(parts)]


def _adapt_model(clip_path, dropout: float = 0.0, **weights) -> AdaptModel:
    torch.manual_seed(0)
    clip = load_clip(clip_path, image_size=(32, 16))
    clip.set_text_dropout(dropout)
    loss_cfg = EasyDict({**defaults()["loss"], **weights})
    return AdaptModel(clip, loss_cfg, num_classes=16).train()


def _grads(model) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_close(one: dict, two: dict, rtol=1e-4, atol=1e-6):
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=rtol, atol=atol), name


def _sgd(model):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)


def _scaler():
    return torch.amp.GradScaler("cpu", enabled=False)


def test_four_micro_batches_of_8_equal_one_batch_of_32(tiny_clip_path):
    """Stage 1 with every loss on (soft targets, R-ITC, CITC, ID, SS): gradients and the
    weights after the step agree to float tolerance."""
    model = _adapt_model(tiny_clip_path, id=1.0, citc=0.5, ss=0.4)
    plain, accumulated = model, copy.deepcopy(model)
    batch = _batch(32, view=True)
    loss_one, losses_one = train_step(plain, _sgd(plain), _scaler(), batch, {"alpha": 0.5},
                                      CPU, None)
    loss_four, losses_four = accumulated_step(accumulated, _sgd(accumulated), _scaler(),
                                              _split(batch, 4), {"alpha": 0.5}, CPU, None)
    assert set(losses_one) == {"nitc_loss", "nisc_loss", "ritc_loss", "citc_loss", "id_loss",
                               "ss_loss"}
    for name in losses_one:
        assert torch.allclose(losses_one[name], losses_four[name], atol=1e-5), name
    assert torch.allclose(loss_one, loss_four, atol=1e-5)
    _assert_close(_grads(plain), _grads(accumulated))
    assert len(_grads(plain)) > 20  # the towers, the logit scale and both heads
    _assert_close(dict(plain.named_parameters()), dict(accumulated.named_parameters()),
                  atol=1e-6)


def test_dropout_masks_are_replayed(tiny_clip_path):
    """With the text tower's dropout on, the cached step equals K micro-batches forwarded
    with a graph from the same random state (each micro-batch sees the masks it saw in the
    gradient-free pass); a different random state gives other gradients."""
    model = _adapt_model(tiny_clip_path, dropout=0.3)
    micro = _split(_batch(32), 4)

    torch.manual_seed(123)
    cached = copy.deepcopy(model)
    accumulated_step(cached, _sgd(cached), _scaler(), micro, {"alpha": 0.5}, CPU, None)

    def direct(seed):
        copy_ = copy.deepcopy(model)
        torch.manual_seed(seed)
        feats = [copy_.features(batch) for batch in micro]
        joined = {key: torch.cat([f[key] for f in feats]) for key in feats[0]}
        labels = torch.cat([batch["label"] for batch in micro])
        sum(copy_.losses(joined, labels, alpha=0.5).values()).backward()
        return _grads(copy_)

    _assert_close(_grads(cached), direct(123))
    other = direct(7)
    text_grad = "clip.transformer.resblocks.0.attn.in_proj_weight"
    assert not torch.allclose(other[text_grad], _grads(cached)[text_grad], atol=1e-6)


def test_stage2_two_micro_batches_equal_one_batch(tiny_clip_path):
    torch.manual_seed(0)
    clip = load_clip(tiny_clip_path, image_size=(32, 16))
    # Both dropouts off (the mapping network's and the text tower's): the two runs would
    # draw different masks. Replay under dropout is tested above.
    cfg = load_config(None, ["model.middle_dim=32", "model.mapping_dropout=0"])
    model = TokenModel(clip, cfg.model, cfg.loss).train()
    plain, accumulated = model, copy.deepcopy(model)
    batch = _batch(16)
    train_step(plain, _sgd(plain), _scaler(), batch, {}, CPU, None)
    accumulated_step(accumulated, _sgd(accumulated), _scaler(), _split(batch, 2), {}, CPU, None)
    grads = _grads(plain)
    assert any(name.startswith("img2text.") for name in grads)
    assert not any(name.startswith("clip.transformer.") for name in grads)  # text tower frozen
    _assert_close(grads, _grads(accumulated))


@pytest.mark.parametrize("global_batch, batch, world, accum, expected", [
    (240, 60, 1, 1, 4), (240, 60, 4, 1, 1), (240, 60, 2, 2, 2), (240, 30, 1, 1, 8),
    (0, 60, 1, 3, 3), (0, 60, 2, 1, 1)])
def test_accumulation_steps(global_batch, batch, world, accum, expected):
    cfg = EasyDict(train={"global_batch": global_batch, "batch_size": batch, "accum_steps": accum})
    assert accumulation_steps(cfg, world) == expected


@pytest.mark.parametrize("global_batch, batch, world, accum, message", [
    (240, 60, 8, 1, "not a multiple of train.batch_size x processes = 60 x 8"),
    (240, 50, 1, 1, "not a multiple"),
    (240, 60, 1, 3, "contradicts train.global_batch=240"),
    (0, 60, 1, 0, "must be at least 1")])
def test_accumulation_steps_errors(global_batch, batch, world, accum, message):
    cfg = EasyDict(train={"global_batch": global_batch, "batch_size": batch, "accum_steps": accum})
    with pytest.raises(ConfigError, match=message):
        accumulation_steps(cfg, world)


def test_sampler_steps_hold_the_samples_of_one_big_batch():
    """With K micro-batches per step (and W processes), a step's micro-batches together are
    the samples of one batch of K x B x W; every process gets whole steps."""
    big = list(EpochSampler(103, batch_size=24, seed=5))
    indices = [index for index, _ in big]
    steps = len(indices) // 24
    for world in (1, 2):
        per_rank = [list(EpochSampler(103, batch_size=12 // world, seed=5, rank=rank,
                                      world_size=world, accum_steps=2))
                    for rank in range(world)]
        micro = 12 // world
        assert all(len(items) == steps * 2 * micro for items in per_rank)
        for step in range(steps):
            seen = sorted(index for items in per_rank
                          for index, _ in items[step * 2 * micro:(step + 1) * 2 * micro])
            assert seen == sorted(indices[step * 24:(step + 1) * 24])
        assert EpochSampler(103, 12 // world, 5, 0, world, 2).batches_per_epoch == steps * 2
