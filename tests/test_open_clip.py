"""open_clip's ViT files load, in the activation they were trained with, and give the
features of open_clip's own model (open-clip-torch, a test-only peer)."""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import sys

import pytest
import torch

from engine.models import load_for_inference
from model.build import clip_from_pretrained, clip_from_project_state
from model.clip import CheckpointError, load_clip
from model.tokenizer import tokenize
from tests.peers import missing_peer
from utils.config import load_config, to_plain

CAPTIONS = [
    "a woman in a red short-sleeved shirt and black trousers, carrying a white handbag",
    "A MAN WITH SHORT HAIR wearing a blue jacket & grey shorts.",
    "",
    "person with a backpack " * 20,  # longer than the context: cut, end token kept
]
# A ViT small enough for a CPU, in the layout of open_clip's ViT-B-16 (64-channel heads).
TINY = {"embed_dim": 48,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                     "layers": 2}}
FILE_NAMES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")


def open_clip_peer():
    """The installed open_clip package, or skip (fail under CI) as tests/peers.py does."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        missing_peer("peer package 'open_clip' (open-clip-torch) is not installed: "
                     "pip install -r requirements-dev.txt")
    try:
        import open_clip
    except ImportError as error:
        missing_peer(f"peer package 'open_clip' (open-clip-torch) cannot be imported: {error}")
    return open_clip


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("open_clip_configs")


def peer_model(config_dir, quick_gelu: bool, seed: int = 0, custom_text: bool = False,
               name: str = "tiny-sketch-reid", model_cfg: dict = TINY):
    """open_clip's model for ``model_cfg`` (registered under ``name``), every parameter
    (biases and norms too) set to random values."""
    open_clip = open_clip_peer()
    config_file = config_dir / f"{name}.json"
    if not config_file.exists():
        config_file.write_text(json.dumps(model_cfg), encoding="utf-8")
        open_clip.add_model_config(config_file)
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu,
                                   force_custom_text=custom_text)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if parameter_name != "logit_scale":
                std = 0.05 if parameter.dim() > 1 else 0.5
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def save(state_dict: dict, path) -> None:
    """``torch.save``, or ``safetensors`` for a ``.safetensors`` path (skip/fail without it)."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            missing_peer("safetensors is not installed (pip install -r requirements-dev.txt): "
                         "the .safetensors case is not tested")
        save_file({key: value.contiguous() for key, value in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


def feature_errors(model, peer, image_size=(32, 32)) -> tuple:
    images = torch.randn(3, 3, *image_size, generator=torch.Generator().manual_seed(1))
    tokens = tokenize(CAPTIONS)
    with torch.no_grad():
        return (relative_error(model.encode_image(images), peer.encode_image(images)),
                relative_error(model.encode_text(tokens), peer.encode_text(tokens)))


@pytest.mark.parametrize("file_name", FILE_NAMES)
@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quickgelu"])
def test_open_clip_file_parity(tmp_path, config_dir, file_name, quick_gelu):
    peer = peer_model(config_dir, quick_gelu, seed=int(quick_gelu))
    save(peer.state_dict(), tmp_path / file_name)
    model = load_clip(tmp_path / file_name, image_size=(32, 32), quick_gelu=quick_gelu).eval()
    assert model.arch.quick_gelu is quick_gelu
    assert (model.arch.vision_layers, model.arch.text_layers, model.arch.embed_dim) == (2, 2, 48)
    image_error, text_error = feature_errors(model, peer)
    assert image_error < 1e-4 and text_error < 1e-4, (image_error, text_error)
    assert torch.equal(model.logit_scale, peer.logit_scale)


def test_wrong_activation_gives_other_features(tmp_path, config_dir):
    """The test above can fail: the other activation moves both towers' features."""
    peer = peer_model(config_dir, quick_gelu=False, seed=2)
    save(peer.state_dict(), tmp_path / FILE_NAMES[0])
    wrong = load_clip(tmp_path / FILE_NAMES[0], image_size=(32, 32), quick_gelu=True).eval()
    image_error, text_error = feature_errors(wrong, peer)
    # Ten times the tolerance above at least (random weights keep the activations near 0,
    # where the two differ least; trained ones differ more).
    assert image_error > 1e-3 and text_error > 1e-3, (image_error, text_error)


def test_custom_text_layout_and_trainer_checkpoint(tmp_path, config_dir):
    """CustomTextCLIP's ``text.*`` names, and open_clip's trainer checkpoint
    (``{"state_dict": {"module.*": ...}}``, a ``.pt``), map to OpenAI's names."""
    peer = peer_model(config_dir, quick_gelu=False, seed=3, custom_text=True)
    assert any(key.startswith("text.token_embedding") for key in peer.state_dict())
    save(peer.state_dict(), tmp_path / FILE_NAMES[0])
    model = load_clip(tmp_path / FILE_NAMES[0], image_size=(32, 32), quick_gelu=False).eval()
    assert max(feature_errors(model, peer)) < 1e-4
    trainer = {"epoch": 32, "name": "laion-run",
               "state_dict": {f"module.{key}": value for key, value in peer.state_dict().items()}}
    torch.save(trainer, tmp_path / "epoch_32.pt")
    with pytest.raises(CheckpointError, match="open_clip file"):
        load_clip(tmp_path / "epoch_32.pt", image_size=(32, 32))
    model = load_clip(tmp_path / "epoch_32.pt", image_size=(32, 32), quick_gelu=False).eval()
    assert max(feature_errors(model, peer)) < 1e-4


def test_plain_state_dict_defaults_to_quick_gelu(tmp_path, config_dir, caplog):
    peer = peer_model(config_dir, quick_gelu=True, seed=4)
    torch.save(peer.state_dict(), tmp_path / "ViT-tiny.pt")
    with caplog.at_level(logging.INFO, logger="model.clip"):
        model = load_clip(tmp_path / "ViT-tiny.pt", image_size=(32, 32)).eval()
    assert model.arch.quick_gelu is True
    assert max(feature_errors(model, peer)) < 1e-4
    lines = [record.getMessage() for record in caplog.records if record.name == "model.clip"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert str(tmp_path / "ViT-tiny.pt") in lines[0] and "model.quick_gelu=false" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="model.clip"):
        load_clip(tmp_path / "ViT-tiny.pt", image_size=(32, 32), quick_gelu=True)
    assert not caplog.records  # the key given: nothing to say


@pytest.mark.parametrize("file_name", FILE_NAMES)
def test_open_clip_file_without_the_key_is_refused(tmp_path, config_dir, file_name):
    save(peer_model(config_dir, quick_gelu=False).state_dict(), tmp_path / file_name)
    with pytest.raises(CheckpointError) as caught:
        load_clip(tmp_path / file_name, image_size=(32, 32))
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / file_name) in message
    assert "model.quick_gelu=false" in message and "laion2b_s34b_b88k" in message
    assert "model.quick_gelu=true" in message and "OpenAI-trained" in message


def test_safetensors_errors(tmp_path, monkeypatch):
    """A broken file is named; without the package, one line says how to get it."""
    (tmp_path / "broken.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{")
    if importlib.util.find_spec("safetensors") is not None:
        with pytest.raises(CheckpointError, match="cannot read .*broken.safetensors"):
            load_clip(tmp_path / "broken.safetensors", quick_gelu=False)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(CheckpointError, match=r"broken.safetensors: .*\(pip install safetensors\)"):
        load_clip(tmp_path / "broken.safetensors", quick_gelu=False)


@pytest.mark.parametrize("variant, expected", [
    ({"vision_cfg": {"attentional_pool": True, "attn_pooler_queries": 4,
                     "attn_pooler_heads": 2}}, r"unexpected keys: visual\.attn_pool"),
    ({"vision_cfg": {"ls_init_value": 0.1}}, r"unexpected keys: .*ls_1\.gamma"),
    ({"vision_cfg": {"no_ln_pre": True}}, r"missing keys: visual\.ln_pre"),
], ids=["attn-pool", "layer-scale", "no-ln-pre"])
def test_other_open_clip_layouts_are_named(tmp_path, config_dir, variant, expected):
    model_cfg = copy.deepcopy(TINY)
    model_cfg["vision_cfg"].update(variant["vision_cfg"])
    name = "tiny-sketch-reid-" + "-".join(sorted(variant["vision_cfg"]))
    peer = peer_model(config_dir, quick_gelu=False, name=name, model_cfg=model_cfg)
    save(peer.state_dict(), tmp_path / FILE_NAMES[0])
    with pytest.raises(CheckpointError, match=expected) as caught:
        load_clip(tmp_path / FILE_NAMES[0], image_size=(32, 32), quick_gelu=False)
    assert "OpenAI's layout" in str(caught.value)


@pytest.mark.parametrize("width, name", [(1280, "ViT-H"), (1408, "ViT-g"), (1664, "ViT-bigG")])
def test_wide_head_towers_are_refused(tmp_path, config_dir, width, name):
    """The number of heads is in no shape: an image tower as wide as open_clip's ViT-H/g/bigG
    (heads wider than 64 channels) is refused rather than split into the wrong heads. Only
    the patch embedding is widened; the check reads shapes before anything is built."""
    state = dict(peer_model(config_dir, False).state_dict())
    state["visual.conv1.weight"] = torch.zeros(width, 3, 1, 1)
    torch.save(state, tmp_path / FILE_NAMES[0])
    expected = rf"open_clip's {name} \(\d+-channel heads\)"
    with pytest.raises(CheckpointError, match=expected):
        load_clip(tmp_path / FILE_NAMES[0], quick_gelu=False)
    # test.py, search.py and app.py say the same, not "not a checkpoint".
    with pytest.raises(CheckpointError, match=expected):
        load_for_inference(tmp_path / FILE_NAMES[0], ["model.quick_gelu=false"])


def test_foreign_towers_are_named(tmp_path, config_dir):
    """A timm image tower or a Hugging Face text tower: the keys found instead are named."""
    state = {key: value for key, value in peer_model(config_dir, False).state_dict().items()
             if not key.startswith("visual.")}
    state["visual.trunk.patch_embed.proj.weight"] = torch.zeros(8, 3, 4, 4)
    state["visual.head.proj.weight"] = torch.zeros(4, 8)
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"missing visual\.conv1\.weight.*it has "
                                              r"visual\.head\.\*, visual\.trunk\.\* instead"):
        load_clip(tmp_path / "open_clip_pytorch_model.bin", quick_gelu=False)


def test_logit_bias_and_mask_are_dropped(tmp_path, config_dir):
    peer = peer_model(config_dir, quick_gelu=False, seed=5)
    state = dict(peer.state_dict())
    state["logit_bias"] = torch.tensor(-10.0)  # SigLIP's, a loss parameter
    state["attn_mask"] = peer.attn_mask  # saved by an open_clip that kept it persistent
    state["logit_scale"] = state["logit_scale"].reshape(1)
    torch.save(state, tmp_path / FILE_NAMES[0])
    model = load_clip(tmp_path / FILE_NAMES[0], image_size=(32, 32), quick_gelu=False).eval()
    assert max(feature_errors(model, peer)) < 1e-4 and model.logit_scale.shape == ()


def test_clip_from_pretrained_records_the_activation(tmp_path, config_dir):
    save(peer_model(config_dir, quick_gelu=False).state_dict(), tmp_path / FILE_NAMES[0])
    torch.save(peer_model(config_dir, quick_gelu=True).state_dict(), tmp_path / "clip.pt")
    base = ["model.image_size=[32,32]"]
    cfg = load_config(None, [*base, f"model.pretrained={tmp_path / FILE_NAMES[0]}",
                             "model.quick_gelu=false"])
    assert clip_from_pretrained(cfg).arch.quick_gelu is False
    assert to_plain(cfg)["model"]["quick_gelu"] is False
    cfg = load_config(None, [*base, f"model.pretrained={tmp_path / 'clip.pt'}"])
    assert cfg.model.quick_gelu is None
    assert clip_from_pretrained(cfg).arch.quick_gelu is True and cfg.model.quick_gelu is True
    cfg = load_config(None, [*base, f"model.pretrained={tmp_path / FILE_NAMES[0]}"])
    with pytest.raises(CheckpointError, match="model.quick_gelu=false"):
        clip_from_pretrained(cfg)


def test_project_checkpoints_keep_their_activation(tmp_path, config_dir):
    """A stored config's ``model.quick_gelu`` rebuilds the same network; older configs
    (the key missing or null) were all QuickGELU."""
    peer = peer_model(config_dir, quick_gelu=False, seed=6)
    save(peer.state_dict(), tmp_path / FILE_NAMES[0])
    cfg = load_config(None, ["model.image_size=[32,32]", "model.quick_gelu=false",
                             f"model.pretrained={tmp_path / FILE_NAMES[0]}"])
    trained = clip_from_pretrained(cfg)
    stored_cfg = to_plain(cfg)
    model_state = {f"clip.{key}": value for key, value in trained.state_dict().items()}

    fresh = load_config(None, ["model.image_size=[32,32]"])
    rebuilt = clip_from_project_state(model_state, stored_cfg, fresh).eval()
    assert rebuilt.arch.quick_gelu is False and fresh.model.quick_gelu is False
    assert max(feature_errors(rebuilt, peer)) < 1e-4

    older = copy.deepcopy(stored_cfg)
    del older["model"]["quick_gelu"]
    for stored in (older, {**older, "model": {**older["model"], "quick_gelu": None}}):
        fresh = load_config(None, ["model.image_size=[32,32]"])
        assert clip_from_project_state(model_state, stored, fresh).arch.quick_gelu is True
        assert fresh.model.quick_gelu is True

    conflicting = load_config(None, ["model.image_size=[32,32]", "model.quick_gelu=true"])
    with pytest.raises(CheckpointError, match="trained with GELU"):
        clip_from_project_state(model_state, stored_cfg, conflicting, source="run/best.pth")


@pytest.mark.slow
def test_a_run_records_the_activation(tmp_path, config_dir, synthetic_root):
    """Training from an open_clip GELU file writes model.quick_gelu: false into the run's
    config.yaml and checkpoints, and the checkpoint rebuilds a GELU CLIP."""
    import train_adapt
    from model.build import adapt_model_from_checkpoint
    from tests.conftest import tiny_overrides
    from utils.checkpoint import load_checkpoint
    from utils.config import read_yaml

    clip_path = tmp_path / FILE_NAMES[0]
    save(peer_model(config_dir, quick_gelu=False, seed=7).state_dict(), clip_path)
    out = tmp_path / "run"
    overrides = tiny_overrides(clip_path, synthetic_root, out,
                               **{"data.dataset": "rstpreid", "model.image_size": "[32,32]"})
    train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml", *overrides,
                      "model.quick_gelu=false"])
    assert read_yaml(out / "config.yaml")["model"]["quick_gelu"] is False
    checkpoint = load_checkpoint(out / "checkpoint_best.pth")
    assert checkpoint["config"]["model"]["quick_gelu"] is False
    cfg = load_config(None, [], base=checkpoint["config"])
    model = adapt_model_from_checkpoint(checkpoint, cfg, "checkpoint_best.pth")
    assert model.clip.arch.quick_gelu is False
