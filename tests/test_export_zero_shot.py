"""Weights export (python -m engine.export) and zero-shot evaluation of a CLIP file."""
from __future__ import annotations

import json

import pytest
import torch

import test as test_entry
from engine import export
from engine.api import Retriever
from utils.checkpoint import load_checkpoint


def _evaluate(checkpoint, out, *extra) -> dict:
    return test_entry.main(["--checkpoint", str(checkpoint), f"output_dir={out}", *extra])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_gives_the_same_numbers_in_a_smaller_file(market_run, tmp_path, capsys, suffix):
    full = market_run / "checkpoint_best.pth"
    out = tmp_path / f"market{suffix}"
    written = export.main([str(market_run), "--out", str(out)])
    assert "MiB (from" in capsys.readouterr().out
    assert sum(path.stat().st_size for path in written) < full.stat().st_size
    if suffix == ".pth":
        raw = torch.load(out, weights_only=True)
        assert {"stage", "model", "config", "epoch", "trial", "exported"} <= set(raw)
        assert set(raw) <= {"stage", "model", "config", "epoch", "trial", "exported", "results"}
    else:
        assert (tmp_path / "market.json").is_file()
    exported = load_checkpoint(out, expected_stage="token")
    original = load_checkpoint(full)
    assert exported["model"].keys() == original["model"].keys()
    assert all(torch.equal(exported["model"][k], original["model"][k]) for k in exported["model"])
    assert _evaluate(out, tmp_path / "a")["tasks"] == _evaluate(full, tmp_path / "b")["tasks"]


def test_exported_weights_serve_search_and_stage2(market_run, stage1_run, synthetic_root,
                                                  tiny_clip_path, tmp_path):
    from PIL import Image

    from tests.conftest import run_token
    exported = tmp_path / "market.pth"
    export.main([str(market_run / "checkpoint_best.pth"), "--out", str(exported)])
    gallery = synthetic_root / "Market-Sketch-1K" / "photo" / "query"
    sketch = next((synthetic_root / "Market-Sketch-1K" / "sketch").rglob("*.jpg"))
    ranked = [Retriever.load(path, device="cpu").index(gallery, tmp_path / f"{name}.pt")
              .search(Image.open(sketch), ["a man"], topk=5)
              for name, path in (("a", exported), ("b", market_run / "checkpoint_best.pth"))]
    assert ranked[0] == ranked[1]
    # A stage-1 export starts stage 2 (model.init_from).
    stage1 = tmp_path / "stage1.safetensors"
    export.main([str(stage1_run), "--out", str(stage1)])
    run_token(tiny_clip_path, synthetic_root, tmp_path / "token", stage1_run,
              **{"model.init_from": str(stage1)})
    trained = torch.load(tmp_path / "token" / "checkpoint_best.pth", weights_only=True)["model"]
    start = load_checkpoint(stage1_run / "checkpoint_best.pth")["model"]
    for key in ("clip.token_embedding.weight", "clip.text_projection"):  # frozen: as exported
        assert torch.equal(trained[key], start[key]), key


def test_half_weights_and_results(stage1_run, tmp_path):
    test_entry.main(["--checkpoint", str(stage1_run / "checkpoint_best.pth")])
    out = tmp_path / "stage1-half.pth"
    export.main([str(stage1_run), "--out", str(out), "--half"])
    saved = torch.load(out, weights_only=True)
    assert saved["exported"] == {"half": True}
    assert saved["results"] == json.loads((stage1_run / "results.json").read_text())
    assert all(t.dtype == torch.float16 for t in saved["model"].values() if t.is_floating_point())
    full = _evaluate(stage1_run / "checkpoint_best.pth", tmp_path / "full")
    half = _evaluate(out, tmp_path / "half")
    for task, metrics in full["tasks"].items():
        for metric, value in metrics.items():
            assert half["tasks"][task][metric] == pytest.approx(value, abs=10.0)


def test_export_refuses_bad_requests(market_run, tmp_path, capsys):
    cases = [
        ([str(market_run), "--out", str(tmp_path / "x.zip")], "the name must end in"),
        ([str(tmp_path / "missing"), "--out", str(tmp_path / "y.pth")], "checkpoint not found"),
        ([str(tmp_path), "--out", str(tmp_path / "z.pth")], "holds no checkpoint_best.pth"),
    ]
    existing = tmp_path / "exists.pth"
    existing.write_bytes(b"keep me")
    cases.append(([str(market_run), "--out", str(existing)], "exports never overwrite"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            export.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"


def test_zero_shot_evaluation_of_a_clip_file(tiny_clip_path, synthetic_root, tmp_path,
                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [f"data.root={synthetic_root}", "data.dataset=cuhk-pedes", "device=cpu",
            "model.image_size=[32,16]"]
    results = test_entry.main(["--checkpoint", str(tiny_clip_path), *base])
    assert results["zero_shot"] is True
    assert set(results["tasks"]) == {"text_to_image", "sketch_to_image"}
    out = tmp_path / "outputs" / f"zero_shot_{tiny_clip_path.stem}"
    assert (out / "results.json").is_file() and (out / "queries.json").is_file()
    # The CLIP as a stage-1 model before any training step gives the same numbers.
    from engine.stages import AdaptStage
    from utils.config import load_config
    cfg = load_config(None, [*base, f"model.pretrained={tiny_clip_path}"])
    model = AdaptStage().zero_shot_model(cfg).eval()
    direct = AdaptStage().evaluate(model, cfg, "test", torch.device("cpu"))
    assert direct["tasks"] == results["tasks"]


def test_zero_shot_refuses_stage2_tasks(tiny_clip_path, synthetic_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        test_entry.main(["--checkpoint", str(tiny_clip_path), f"data.root={synthetic_root}",
                         "data.dataset=mask1k", f"output_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "holds CLIP weights, which are tested zero-shot on the stage-1 tasks only" in err
    assert "mask1k needs a stage-2 checkpoint" in err
