"""CUDA checks (skipped without a GPU): the same model on GPU and CPU, and a training run
with bf16/fp16 autocast. ``bash bench/gpu_check.sh`` runs them on a GPU machine."""
from __future__ import annotations

import copy

import pytest
import torch

from model.tokenizer import tokenize
from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def no_tf32():
    """Full fp32 matrix products and convolutions on the GPU (TF32 rounds to ~1e-3)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_encoders_agree_with_the_cpu(tiny_clip, no_tf32):
    model = tiny_clip.eval()
    images = torch.randn(4, 3, 32, 32)
    tokens = tokenize(["a red coat", "blue shorts and a black backpack"])
    with torch.no_grad():
        cpu_image, cpu_text = model.encode_image(images), model.encode_text(tokens)
        gpu = model.cuda()
        torch.testing.assert_close(gpu.encode_image(images.cuda()).cpu(), cpu_image,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gpu.encode_text(tokens.cuda()).cpu(), cpu_text,
                                   atol=1e-4, rtol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = gpu.encode_image(images.cuda()).float().cpu()
        assert torch.nn.functional.cosine_similarity(half, cpu_image).min() > 0.99


def test_training_and_test_on_cuda_with_autocast(tiny_clip_path, synthetic_root, tmp_path):
    import test as test_entry
    import train_adapt
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_clip_path, synthetic_root, out,
                               **{"data.dataset": "rstpreid", "device": "cuda"})
    record = train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml", *overrides])
    assert set(record["test"]["tasks"]) == {"text_to_image", "sketch_to_image"}
    checkpoint = torch.load(out / "checkpoint_best.pth", weights_only=True)
    assert all(not tensor.is_cuda for tensor in checkpoint["model"].values())

    # The same checkpoint evaluated on the CPU and on the GPU ranks the same way. TF32 (which
    # training switched on) is off for the GPU run: its ~1e-3 rounding could swap two close
    # scores, and one swap among these 10-20 queries moves R1 by 5-10 points.
    on_cpu = test_entry.main(["--checkpoint", str(out), "device=cpu",
                              f"output_dir={tmp_path / 'cpu'}"])
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        on_cuda = test_entry.main(["--checkpoint", str(out), "device=cuda",
                                   f"output_dir={tmp_path / 'cuda'}"])
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert set(on_cuda["tasks"]) == set(on_cpu["tasks"]) == {"text_to_image", "sketch_to_image"}
    for task, metrics in on_cpu["tasks"].items():
        for metric, value in metrics.items():
            assert on_cuda["tasks"][task][metric] == pytest.approx(value, abs=0.5), (task, metric)


def test_fused_adamw_and_trimmed_text_on_cuda(tiny_clip, no_tf32):
    """On CUDA the optimizer is the fused kernel, and the text tower's features with the
    padding cut equal those over the whole context."""
    from easydict import EasyDict

    from engine.trainer import build_optimizer
    from model.clip import CLIP

    model = copy.deepcopy(tiny_clip).cuda().eval()
    cfg = EasyDict(train={"weight_decay": 0.2, "lr": 1e-5, "betas": [0.9, 0.98], "eps": 1e-6})
    assert all(group["fused"] for group in build_optimizer(model, cfg).param_groups)
    tokens = tokenize(["a red coat", "blue shorts and a black backpack"]).cuda()
    pseudo = torch.randn(2, model.arch.text_width, device="cuda")
    full_length = CLIP.trim_padding
    try:
        with torch.no_grad():
            trimmed = (model.encode_text(tokens),
                       model.encode_text_with_pseudo_token(tokens, pseudo))
            CLIP.trim_padding = lambda self, tokens: tokens
            full = model.encode_text(tokens), model.encode_text_with_pseudo_token(tokens, pseudo)
    finally:
        CLIP.trim_padding = full_length
    for ours, reference in zip(trimmed, full):
        assert ((ours - reference).norm() / reference.norm()).item() < 1e-5


def test_resume_from_a_foreach_checkpoint_steps_with_fused_adamw_on_cuda():
    """A checkpoint written by a foreach run (step counters on the CPU) loads into the fused
    optimizer on CUDA and steps; the result equals continuing the foreach run."""
    from easydict import EasyDict

    from engine.trainer import build_optimizer, load_optimizer_state

    cfg = EasyDict(train={"weight_decay": 0.2, "lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-6})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).cuda()
    inputs = torch.randn(4, 8, device="cuda")
    old = build_optimizer(model, cfg)
    for group in old.param_groups:
        group.update(fused=None, foreach=True)
    model(inputs).square().mean().backward()
    old.step()
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(old.state_dict())

    old.zero_grad(set_to_none=True)
    model(inputs).square().mean().backward()
    old.step()  # the foreach run, one step further
    expected = [p.detach().clone() for p in model.parameters()]

    model.load_state_dict(saved_model)
    model.zero_grad(set_to_none=True)
    optimizer = build_optimizer(model, cfg)
    load_optimizer_state(optimizer, saved_state)
    assert all(group["fused"] for group in optimizer.param_groups)
    model(inputs).square().mean().backward()
    optimizer.step()
    for ours, reference in zip(model.parameters(), expected):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_residual_stream_under_cuda_fp16_autocast_is_float32(tiny_clip):
    """Under CUDA float16 autocast the norms return float32 as ``nn.LayerNorm`` does (the
    paper's code's LayerNorm), so every block of both towers gets a float32 stream."""
    from model.clip import LayerNorm

    model = copy.deepcopy(tiny_clip).cuda().train()
    x = torch.randn(2, 5, 64, device="cuda", dtype=torch.float16)
    with torch.autocast("cuda", dtype=torch.float16):
        plain = torch.nn.LayerNorm(64).cuda()(x)
        ours = LayerNorm(64).cuda()(x)
    assert plain.dtype == ours.dtype == torch.float32
    torch.testing.assert_close(ours, plain)
    seen = []
    for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    tokens = tokenize(["a red coat", "blue shorts"]).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        image_feats = model.encode_image(torch.randn(2, 3, 32, 32, device="cuda"))
        text_feats = model.encode_text(tokens)
    assert seen == [torch.float32] * len(seen) and len(seen) == 4
    assert image_feats.dtype == text_feats.dtype == torch.float16


def test_one_fp16_autocast_training_step(tiny_clip_path):
    """One optimizer step of stage 1 under float16 autocast with the grad scaler: finite
    loss terms, every trainable parameter moved, the scaler's scale unchanged (no skip)."""
    from easydict import EasyDict

    from engine.trainer import build_optimizer, train_step
    from model.adapt import AdaptModel
    from model.clip import load_clip
    from utils.config import defaults

    torch.manual_seed(0)
    clip = load_clip(tiny_clip_path, image_size=(32, 16))
    model = AdaptModel(clip, EasyDict(defaults()["loss"]), num_classes=4).cuda().train()
    cfg = EasyDict(train={"weight_decay": 0.02, "lr": 1e-4, "betas": [0.9, 0.98], "eps": 1e-8})
    optimizer = build_optimizer(model, cfg)
    # A moderate first scale: 2**16 may overflow on a first step and skip it by design.
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10)
    batch = {"photo": torch.randn(8, 3, 32, 16), "sketch": torch.randn(8, 3, 32, 16),
             "tokens": tokenize([f"a person in coat number {i}" for i in range(8)]),
             "label": torch.arange(8) % 4}
    batch = {key: value.cuda() for key, value in batch.items()}
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    loss, losses = train_step(model, optimizer, scaler, batch, {"alpha": 0.5},
                              torch.device("cuda"), torch.float16)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in losses.values())
    assert scaler.get_scale() == 2.0 ** 10  # no overflow, so the step was taken
    unchanged = [name for name, p in model.named_parameters()
                 if p.requires_grad and torch.equal(p.detach(), before[name])]
    assert not unchanged, unchanged


def test_rerank_on_cuda_equals_the_cpu():
    """k-reciprocal re-ranking (test.rerank) on the GPU: the CPU's distances, and the same
    metrics through ``engine.evaluation.retrieval``."""
    from engine.evaluation import retrieval
    from utils.rerank import gallery_neighbours, k_reciprocal_rerank, rerank_queries
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 12, (240,), generator=generator)
    centres = torch.nn.functional.normalize(torch.randn(12, 64, generator=generator), dim=1)
    feats = torch.nn.functional.normalize(
        centres[ids] + 0.3 * torch.randn(240, 64, generator=generator) / 8, dim=1)
    query, gallery = feats[:40], feats[40:]
    cpu = k_reciprocal_rerank(query, gallery)
    gpu = k_reciprocal_rerank(query.cuda(), gallery.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-6)
    stored = rerank_queries(query.cuda(), gallery.cuda(), gallery_neighbours(gallery.cuda(), 20))
    torch.testing.assert_close(stored.cpu(), cpu, rtol=0, atol=1e-6)
    setting = {"k1": 20, "k2": 6, "lambda": 0.3}
    assert retrieval(query.cuda(), gallery.cuda(), ids[:40], ids[40:], rerank=setting) == \
        pytest.approx(retrieval(query, gallery, ids[:40], ids[40:], rerank=setting), abs=1e-6)


@pytest.mark.parametrize("accumulate", [False, True])
def test_the_fp16_step_never_waits_for_the_device(tiny_clip_path, synthetic_root, tmp_path,
                                                  accumulate):
    """Steps of a stage-1 run (fp16 autocast, the grad scaler, fused AdamW, tokens cut on the
    host) under CUDA's sync-debug mode set to error: any read back from the device inside a
    step raises. The checks between log lines read the device once, outside the steps."""
    from engine import trainer as T
    from engine.stages import AdaptStage
    from utils.config import REPO_ROOT, load_config

    extra = {"device": "cuda", "data.dataset": "rstpreid", "train.compile": "false",
             **({"train.global_batch": 16} if accumulate else {})}
    cfg = load_config(REPO_ROOT / "config" / "TriPEDES_pretrain.yaml",
                      tiny_overrides(tiny_clip_path, synthetic_root, tmp_path / "run", **extra))
    trainer = T.Trainer(cfg, AdaptStage())
    assert trainer.amp_dtype == torch.float16 and trainer.scaler.is_enabled()
    groups = list(trainer.micro_batch_groups(trainer.loader))
    inputs = trainer.stage.loss_inputs(cfg, 1, 0, trainer.steps_per_epoch)
    trainer.train_model.train()
    trainer.train_on(groups[0], inputs)  # warm-up: the scaler and the optimizer state start
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for group in groups[1:]:
            loss, losses = trainer.train_on(group, inputs)
            trainer.loss_watch.update(loss, losses)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.loss_watch.check(len(groups), 0, tmp_path / "last.pth")
