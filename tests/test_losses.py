"""Losses of both stages against plain references, and their gradients across processes."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from easydict import EasyDict

from model.losses import identity_targets, info_nce_loss, reverse_kl_loss, soft_contrastive_loss


def features(batch=6, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(batch, dim, generator=generator), dim=-1),
            F.normalize(torch.randn(batch, dim, generator=generator), dim=-1))


def test_identity_targets_spread_over_same_person():
    targets = identity_targets(torch.tensor([3, 3, 5, 7]))
    assert torch.allclose(targets[0], torch.tensor([0.5, 0.5, 0, 0]))
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_soft_contrastive_without_soft_targets_is_cross_entropy():
    a, b = features()
    labels = torch.arange(6)
    scale = torch.tensor(10.0)
    logits = scale * a @ b.t()
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    assert torch.allclose(soft_contrastive_loss(a, b, labels, scale, alpha=0.0), expected)
    assert torch.allclose(info_nce_loss(a, b, scale), expected)


def test_soft_targets_mix_similarity_and_identity():
    a, b = features()
    labels = torch.tensor([0, 0, 1, 2, 3, 3])
    scale, alpha = torch.tensor(20.0), 0.5
    logits = scale * a @ b.t()
    same = identity_targets(labels)
    targets_ab = alpha * logits.softmax(1) + (1 - alpha) * same
    targets_ba = alpha * logits.t().softmax(1) + (1 - alpha) * same
    expected = (-(logits.log_softmax(1) * targets_ab).sum(1).mean()
                - (logits.t().log_softmax(1) * targets_ba).sum(1).mean()) / 2
    assert torch.allclose(soft_contrastive_loss(a, b, labels, scale, alpha), expected)
    # Separately computed soft features that equal the pass's own give the same loss.
    same_loss = soft_contrastive_loss(a, b, labels, scale, alpha, a.clone(), b.clone())
    assert torch.allclose(same_loss, expected)


def test_reverse_kl_matches_a_direct_sum():
    a, b = features(seed=2)
    labels = torch.tensor([0, 1, 1, 2, 3, 4])
    scale, eps = torch.tensor(15.0), 1e-2
    logits = scale * a @ b.t()
    q = identity_targets(labels) + eps  # not renormalised, as TBPS-CLIP
    total = 0.0
    for direction in (logits, logits.t()):
        p = direction.softmax(1)
        total += sum(p[i, j] * (p[i, j].log() - q[i, j].log())
                     for i in range(6) for j in range(6)) / 6
    assert torch.allclose(reverse_kl_loss(a, b, labels, scale, eps), total / 2, atol=1e-6)


def test_reverse_kl_unnormalised_targets_shift_the_value_not_the_gradient():
    """Renormalising the targets (a proper KL) moves the loss by log(1 + B eps) and leaves
    the gradient as it is."""
    a, b = features(seed=4)
    a.requires_grad_()
    labels = torch.tensor([0, 1, 1, 2, 3, 4])
    scale, eps = torch.tensor(15.0), 1e-2
    loss = reverse_kl_loss(a, b, labels, scale, eps)
    (grad,) = torch.autograd.grad(loss, a)
    logits = scale * a @ b.t()
    q = identity_targets(labels) + eps
    log_q = (q / q.sum(1, keepdim=True)).log()
    proper = sum((d.log_softmax(1).exp() * (d.log_softmax(1) - log_q)).sum(1).mean()
                 for d in (logits, logits.t())) / 2
    (proper_grad,) = torch.autograd.grad(proper, a)
    assert torch.allclose(proper - loss, torch.log(torch.tensor(1 + 6 * eps)), atol=1e-5)
    assert torch.allclose(grad, proper_grad, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loss_cfg(**weights):
    from utils.config import defaults
    cfg = {**defaults()["loss"], "citc": 0.5}
    cfg.update(weights)
    return EasyDict(cfg)


def _batch(size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    from model.tokenizer import tokenize
    words = ["red", "blue", "green", "black", "white", "gray", "pink", "brown"]
    return {"photo": torch.randn(size, 3, 32, 16, generator=generator),
            "sketch": torch.randn(size, 3, 32, 16, generator=generator),
            "tokens": tokenize([f"a person in a {w} coat" for w in words[:size]]),
            "label": torch.tensor([0, 0, 1, 2, 3, 3, 4, 5][:size])}


def _adapt_model(clip_path):
    from model.adapt import AdaptModel
    from model.clip import load_clip
    torch.manual_seed(0)
    return AdaptModel(load_clip(clip_path, image_size=(32, 16)), _loss_cfg(), num_classes=6)


def _worker(rank, world, port, clip_path, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _adapt_model(clip_path)
    batch = _batch()
    half = {key: value[rank * 4:(rank + 1) * 4] for key, value in batch.items()}
    losses = model(half, alpha=0.4)
    sum(losses.values()).backward()
    grads = {}
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)  # what DDP does (sum, then / world)
            grads[name] = parameter.grad / world
    if rank == 0:
        torch.save({"losses": {k: v.item() for k, v in losses.items()}, "grads": grads},
                   result_path)
    dist.barrier()
    dist.destroy_process_group()
    # Leave without running C++ static destructors: gloo's threads can abort the process
    # at interpreter exit (seen rarely, exit status -6, after all work was done).
    os._exit(0)


@pytest.mark.slow
def test_global_batch_gradients_equal_single_process(tiny_clip_path, tmp_path):
    """Two processes with 4 samples each, features gathered with gradients, DDP averaging:
    the same losses and gradients as one process with all 8."""
    model = _adapt_model(tiny_clip_path)
    losses = model(_batch(), alpha=0.4)
    sum(losses.values()).backward()
    context = mp.get_context("spawn")
    port, result_path = _free_port(), tmp_path / "rank0.pt"
    processes = [context.Process(target=_worker, args=(rank, 2, port, tiny_clip_path,
                                                       result_path)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    result = torch.load(result_path, weights_only=True)
    distributed_losses, distributed_grads = result["losses"], result["grads"]
    for name, value in losses.items():
        assert distributed_losses[name] == pytest.approx(value.item(), rel=1e-5), name
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            # elementwise 1e-4, and float noise near zero judged against the tensor's scale
            scale = parameter.grad.abs().max().item()
            assert torch.allclose(distributed_grads[name], parameter.grad, rtol=1e-4,
                                  atol=1e-5 * scale + 1e-7), name


def test_every_stage1_loss_can_be_switched_on(tiny_clip_path):
    from model.adapt import AdaptModel
    from model.clip import load_clip
    model = AdaptModel(load_clip(tiny_clip_path, image_size=(32, 16)),
                       _loss_cfg(id=1.0, citc=0.1, ss=0.4), num_classes=6)
    batch = _batch()
    batch["photo_view"] = batch["photo"].flip(-1)
    losses = model(batch, alpha=0.5)
    assert set(losses) == {"nitc_loss", "nisc_loss", "ritc_loss", "citc_loss", "id_loss",
                           "ss_loss"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.id_classifier.weight.grad.abs().sum() > 0
    assert model.ss_head[0].weight.grad.abs().sum() > 0
    off = AdaptModel(load_clip(tiny_clip_path, image_size=(32, 16)),
                     _loss_cfg(nitc=0.0, ritc=0.0, citc=0.0), num_classes=6)
    assert set(off(_batch(), alpha=0.5)) == {"nisc_loss"}


def test_separate_soft_target_pass_gives_the_same_losses(tiny_clip_path):
    """Without the text tower's dropout (off in a bare ``load_clip``), the reference's extra
    no-grad pass computes the same features."""
    shared = _adapt_model(tiny_clip_path)
    separate = _adapt_model(tiny_clip_path)
    separate.separate_soft_target_pass = True
    batch = _batch()
    one, two = shared(batch, alpha=0.5), separate(batch, alpha=0.5)
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6), name


def test_mixgen_mixes_photos_and_joins_captions():
    from datasets.mixgen import MixGenCollate
    from model.tokenizer import tokenize
    items = [{"photo": torch.full((3, 2, 2), float(i)), "sketch": torch.zeros(3, 2, 2),
              "label": torch.tensor(i), "tokens": tokenize(f"caption {i}")[0],
              "caption": f"caption {i}"} for i in range(10)]
    batch = MixGenCollate(share=0.2, ratio=0.25, context_length=77)(items)
    assert torch.allclose(batch["photo"][0], torch.full((3, 2, 2), 0.75 * 0 + 0.25 * 2))
    assert torch.allclose(batch["photo"][1], torch.full((3, 2, 2), 0.75 * 1 + 0.25 * 3))
    assert torch.equal(batch["photo"][2], torch.full((3, 2, 2), 2.0))
    assert torch.equal(batch["tokens"][0], tokenize("caption 0 caption 2")[0])
    assert torch.equal(batch["tokens"][5], tokenize("caption 5")[0])
    assert "caption" not in batch
