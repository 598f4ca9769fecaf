"""Precision as the paper's code has it: under autocast the residual stream is float32
from ``ln_pre`` on (the image tower) and from the embeddings on (the text tower), with the
matrix products in half precision (CPU autocast, bfloat16, stands in for CUDA's here;
tests/test_cuda.py checks the same under CUDA float16); the evaluation that selects the
checkpoint runs with TF32 off."""
from __future__ import annotations

import torch

from model.clip import LayerNorm
from model.tokenizer import tokenize


def block_input_dtypes(tower) -> tuple:
    """(list the dtypes of each block's input will fill, the hook handles)."""
    seen, handles = [], []
    for block in tower.resblocks:
        handles.append(block.register_forward_pre_hook(
            lambda module, args, seen=seen: seen.append(args[0].dtype)))
    return seen, handles


def test_residual_stream_is_float32_under_autocast(tiny_clip):
    model = tiny_clip.train()
    images = torch.randn(2, 3, 32, 32)
    tokens = tokenize(["a red coat", "blue shorts and a black backpack"])
    visual_in, visual_handles = block_input_dtypes(model.visual.transformer)
    text_in, text_handles = block_input_dtypes(model.transformer)
    ln_pre_out, mlp_out = [], []
    model.visual.ln_pre.register_forward_hook(lambda m, a, out: ln_pre_out.append(out.dtype))
    model.visual.transformer.resblocks[0].mlp.register_forward_hook(
        lambda m, a, out: mlp_out.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image_feats = model.encode_image(images)
        text_feats = model.encode_text(tokens)
    for handle in visual_handles + text_handles:
        handle.remove()
    assert ln_pre_out == [torch.float32]
    assert visual_in == [torch.float32] * len(model.visual.transformer.resblocks)
    assert text_in == [torch.float32] * len(model.transformer.resblocks)
    # The matrix products still run in half precision, features come out of one.
    assert mlp_out == [torch.bfloat16]
    assert image_feats.dtype == text_feats.dtype == torch.bfloat16
    # ... and backward runs through the mixed stream.
    (image_feats.float().sum() + text_feats.float().sum()).backward()
    assert model.visual.transformer.resblocks[0].attn.in_proj_weight.grad is not None


def test_layer_norm_dtype_outside_autocast():
    norm = LayerNorm(8)
    for dtype in (torch.float32, torch.bfloat16):
        assert norm(torch.randn(2, 8).to(dtype)).dtype == dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(torch.randn(2, 8).to(torch.bfloat16))
    assert out.dtype == torch.float32
    reference = torch.nn.functional.layer_norm(out.new_ones(2, 8).float(), (8,))
    torch.testing.assert_close(norm(torch.ones(2, 8)), reference)


def test_evaluation_during_training_runs_without_tf32(tiny_clip_path, synthetic_root, tmp_path,
                                                      monkeypatch):
    """Training may turn TF32 on (it does on CUDA); the per-epoch evaluation that picks
    checkpoint_best.pth runs with it off, and training gets it back afterwards."""
    import train_adapt
    from engine.stages import AdaptStage
    from tests.conftest import tiny_overrides

    seen = []
    evaluate = AdaptStage.evaluate

    def spy(self, *args, **kwargs):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(AdaptStage, "evaluate", spy)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                          *tiny_overrides(tiny_clip_path, synthetic_root, tmp_path / "run",
                                          **{"data.dataset": "rstpreid"})])
        after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert seen == [(False, False)]
    assert after == (True, True)
