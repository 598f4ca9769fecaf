"""CLIP towers and checkpoint loading, checked against OpenAI's own model code."""
from __future__ import annotations

import pytest
import torch

from model.clip import CheckpointError, load_clip
from model.pos_embed import resample_text_positions, resample_vision_positions
from model.random_clip import PRESETS, random_clip_state_dict
from model.random_clip import main as random_clip_main
from model.tokenizer import tokenize
from tests.peers import load_peer_file

CAPTIONS = [
    "a woman in a red short-sleeved shirt and black trousers, carrying a white handbag",
    "A MAN WITH SHORT HAIR wearing a blue jacket & grey shorts.",
    "",
    "person with a backpack " * 20,  # longer than the context: cut, end token kept
]


def peer_clip(embed_dim=48, image_resolution=32, vision_layers=2, vision_width=128, patch=8,
              context_length=77, text_width=64, text_layers=2, seed=0):
    """OpenAI's CLIP with every parameter (biases and norms too) set to random values."""
    peer_model = load_peer_file("clip", "model.py")
    torch.manual_seed(seed)
    model = peer_model.CLIP(embed_dim, image_resolution, vision_layers, vision_width, patch,
                            context_length, 49408, text_width, text_width // 64, text_layers)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name != "logit_scale":
                parameter.normal_(0, 0.05 if parameter.dim() > 1 else 0.5)
    return model.eval()


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


def assert_same_embeddings(model, peer, image_size, context_length=77):
    images = torch.randn(3, 3, *image_size, generator=torch.Generator().manual_seed(1))
    tokens = tokenize(CAPTIONS, context_length)
    with torch.no_grad():
        assert relative_error(model.encode_image(images), peer.encode_image(images)) < 1e-4
        assert relative_error(model.encode_text(tokens), peer.encode_text(tokens)) < 1e-4


def test_state_dict_parity(tmp_path):
    peer = peer_clip()
    torch.save(peer.state_dict(), tmp_path / "clip.pt")
    model = load_clip(tmp_path / "clip.pt", image_size=(32, 32)).eval()
    assert model.arch.vision_layers == 2 and model.arch.text_layers == 2
    assert model.arch.patch_size == 8 and model.arch.embed_dim == 48
    assert_same_embeddings(model, peer, (32, 32))
    assert torch.equal(model.logit_scale, peer.logit_scale)


def test_torchscript_archive_parity(tmp_path):
    """OpenAI publishes TorchScript archives whose state dict carries three metadata scalars."""
    peer = peer_clip(seed=3)
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(peer, name):
            delattr(peer, name)
        peer.register_buffer(name, torch.tensor(value))
    example = (torch.randn(1, 3, 32, 32), tokenize(["a photo"]))
    archive = torch.jit.trace(peer, example, check_trace=False)
    archive.save(str(tmp_path / "ViT-test.pt"))
    model = load_clip(tmp_path / "ViT-test.pt", image_size=(32, 32)).eval()
    assert model.arch.quick_gelu is True
    assert_same_embeddings(model, peer, (32, 32))
    # OpenAI's archives are QuickGELU: asking for GELU is one clear line.
    with pytest.raises(CheckpointError, match=r"ViT-test.pt is OpenAI's TorchScript archive, "
                                              r"trained with QuickGELU: model.quick_gelu=false"):
        load_clip(tmp_path / "ViT-test.pt", image_size=(32, 32), quick_gelu=False)
    assert load_clip(tmp_path / "ViT-test.pt", image_size=(32, 32), quick_gelu=True).arch.quick_gelu


def test_half_precision_file_loads_in_float32(tmp_path):
    peer = peer_clip(seed=4)
    torch.save({key: value.half() for key, value in peer.state_dict().items()}, tmp_path / "h.pt")
    model = load_clip(tmp_path / "h.pt", image_size=(32, 32))
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())


def test_shorter_context_is_exact_for_texts_that_fit(tmp_path):
    peer = peer_clip(seed=5)
    torch.save(peer.state_dict(), tmp_path / "clip.pt")
    model = load_clip(tmp_path / "clip.pt", image_size=(32, 32), context_length=24).eval()
    short = ["a man in a blue coat", "she carries a red bag"]
    with torch.no_grad():
        ours = model.encode_text(tokenize(short, 24))
        reference = peer.encode_text(tokenize(short, 77))
    assert relative_error(ours, reference) < 1e-4
    with pytest.raises(ValueError, match=r"shape \(2, 77\)"):
        model.encode_text(tokenize(short, 77))


def test_person_shaped_input_resamples_the_grid(tmp_path):
    peer = peer_clip(seed=6)
    torch.save(peer.state_dict(), tmp_path / "clip.pt")
    model = load_clip(tmp_path / "clip.pt", image_size=(64, 32))
    positions = model.visual.positional_embedding
    assert positions.shape == (1 + 8 * 4, 128)
    assert torch.equal(positions[0], peer.visual.positional_embedding[0])  # class token kept
    features = model.encode_image(torch.randn(2, 3, 64, 32))
    assert features.shape == (2, 48)


def test_resamplers():
    table = torch.randn(1 + 4 * 4, 8)
    assert torch.equal(resample_vision_positions(table, (4, 4), (4, 4)), table)
    constant = torch.cat([torch.zeros(1, 8), torch.full((16, 8), 3.0)])
    resized = resample_vision_positions(constant, (4, 4), (6, 2))
    assert resized.shape == (13, 8) and torch.allclose(resized[1:], torch.full((12, 8), 3.0))
    # A grid that varies along rows only keeps that structure in the new grid.
    rows = torch.arange(4.0).repeat_interleave(4).unsqueeze(1).expand(16, 8)
    ramp = resample_vision_positions(torch.cat([torch.zeros(1, 8), rows]), (4, 4), (8, 2))
    by_row = ramp[1:, 0].reshape(8, 2)
    assert torch.allclose(by_row[:, 0], by_row[:, 1]) and (by_row[1:, 0] >= by_row[:-1, 0]).all()
    half = torch.randn(77, 8).half()
    assert resample_text_positions(half, 100).dtype == torch.float16
    longer = resample_text_positions(torch.randn(77, 8), 100)
    assert longer.shape == (100, 8)


def test_pseudo_token_equals_the_word_it_stands_for(tiny_clip):
    model = tiny_clip.eval()
    templates = ["a photo of * , and she carries a red bag", "a photo of *"]
    with torch.no_grad():
        for template in templates:
            dog_id = tokenize(["dog"])[0, 1]
            dog_embedding = model.token_embedding.weight[dog_id].expand(2, -1)
            composed = model.encode_text_with_pseudo_token(tokenize([template] * 2), dog_embedding)
            plain = model.encode_text(tokenize([template.replace("*", "dog")] * 2))
            assert torch.allclose(composed, plain, atol=1e-6)
        # Each row gets its own token.
        words = ["dog", "cat"]
        embeddings = torch.stack([model.token_embedding.weight[tokenize([w])[0, 1]] for w in words])
        composed = model.encode_text_with_pseudo_token(tokenize(["a photo of *"] * 2), embeddings)
        plain = model.encode_text(tokenize([f"a photo of {w}" for w in words]))
        assert torch.allclose(composed, plain, atol=1e-6)


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_strict_loading_names_the_key(tmp_path, problem):
    state_dict = random_clip_state_dict(PRESETS["tiny"])
    if problem == "missing":
        del state_dict["ln_final.bias"]
        expected = "missing keys: ln_final.bias"
    elif problem == "unexpected":
        state_dict["visual.extra_head.weight"] = torch.zeros(3)
        expected = "unexpected keys: visual.extra_head.weight"
    else:
        state_dict["visual.ln_post.weight"] = torch.zeros(5)
        expected = r"wrong shapes: visual.ln_post.weight \(checkpoint \[5\], model \[64\]\)"
    torch.save(state_dict, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=expected):
        load_clip(tmp_path / "bad.pt", image_size=(32, 32))


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nothing.pt"):
        load_clip(tmp_path / "nothing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_clip(tmp_path / "garbage.pt")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt"):
        load_clip(tmp_path / "list.pt")
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match="ResNet"):
        load_clip(tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match="multiples of the patch size 8"):
        torch.save(random_clip_state_dict(PRESETS["tiny"]), tmp_path / "tiny.pt")
        load_clip(tmp_path / "tiny.pt", image_size=(30, 32))


@pytest.mark.parametrize("name", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_random_clip_writes_a_gelu_model(tmp_path, name):
    """``--gelu`` writes open_clip's form (no OpenAI metadata), loaded with quick_gelu=False."""
    if name.endswith(".safetensors"):
        pytest.importorskip("safetensors", reason="writing .safetensors needs safetensors")
    random_clip_main(["--out", str(tmp_path / name), "--preset", "tiny", "--gelu"])
    with pytest.raises(CheckpointError, match="model.quick_gelu=false"):
        load_clip(tmp_path / name, image_size=(32, 32))
    model = load_clip(tmp_path / name, image_size=(32, 32), quick_gelu=False)
    assert model.arch.quick_gelu is False
    assert isinstance(model.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    random_clip_main(["--out", str(tmp_path / "openai.pt"), "--preset", "tiny"])
    openai = load_clip(tmp_path / "openai.pt", image_size=(32, 32))
    assert openai.arch.quick_gelu is True
    assert openai.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():  # the same random weights; only the activation differs
        images = torch.randn(2, 3, 32, 32)
        assert not torch.allclose(openai.encode_image(images), model.encode_image(images))


def test_vit_b16_shapes_load_and_match(tmp_path):
    """The full-size path: OpenAI's ViT-B/16 shapes with random weights, 384x128 input."""
    peer = peer_clip(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     patch=16, text_width=512, text_layers=12, seed=7)
    torch.save(peer.state_dict(), tmp_path / "ViT-B-16.pt")
    model = load_clip(tmp_path / "ViT-B-16.pt", image_size=(224, 224)).eval()
    arch = model.arch
    assert (arch.vision_width, arch.vision_layers, arch.patch_size) == (768, 12, 16)
    assert (model.arch.text_width, model.arch.text_layers, model.arch.embed_dim) == (512, 12, 512)
    images = torch.randn(1, 3, 224, 224)
    tokens = tokenize(CAPTIONS[:2])
    with torch.no_grad():
        assert relative_error(model.encode_image(images), peer.encode_image(images)) < 1e-4
        assert relative_error(model.encode_text(tokens), peer.encode_text(tokens)) < 1e-4
    person = load_clip(tmp_path / "ViT-B-16.pt", image_size=(384, 128))
    assert person.visual.positional_embedding.shape == (1 + 24 * 8, 768)


def test_gradients_reach_every_trainable_parameter(tiny_clip):
    model = tiny_clip.train()
    model.freeze_patch_embedding()
    images, tokens = torch.randn(2, 3, 32, 32), tokenize(["a red coat", "a blue bag"])
    loss = model.encode_image(images).sum() + model.encode_text(tokens).square().sum()
    loss = loss + model.logit_scale
    loss.backward()
    assert model.visual.conv1.weight.grad is None
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and name != "token_embedding.weight":
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients(tiny_clip):
    images, tokens = torch.randn(2, 3, 32, 32), tokenize(["a red coat", "a blue bag"])

    def gradients(model):
        model.zero_grad()
        (model.encode_image(images).sum() + model.encode_text(tokens).sum()).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients(tiny_clip)
    tiny_clip.set_grad_checkpointing(True)
    recomputed = gradients(tiny_clip)
    tiny_clip.set_grad_checkpointing(False)
    assert plain.keys() == recomputed.keys()
    for name in plain:
        assert torch.allclose(plain[name], recomputed[name], atol=1e-6), name


def test_quick_gelu_mlp_equals_its_definition_forward_and_backward():
    """The MLP folds QuickGELU's constants into its linear layers; the result and every
    gradient equal c_proj(z * sigmoid(1.702 z)), z = c_fc(x), computed plainly."""
    from model.clip import MLP

    torch.manual_seed(0)
    mlp = MLP(32, quick_gelu=True)
    x = torch.randn(3, 5, 32, requires_grad=True)
    weights = (mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias)
    folded = mlp(x)
    grads = torch.autograd.grad(folded.square().sum(), (x, *weights))
    hidden = mlp.c_fc(x)
    plain = mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden))
    plain_grads = torch.autograd.grad(plain.square().sum(), (x, *weights))
    assert relative_error(folded, plain) < 1e-6
    for ours, reference in zip(grads, plain_grads):
        assert relative_error(ours, reference) < 1e-5
    assert set(mlp.state_dict()) == {"c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"}


def test_text_padding_is_cut_after_the_longest_text_without_changing_features(monkeypatch):
    """The text tower runs on the batch's tokens up to its last end-of-text token; features,
    with and without the pseudo word, equal those over all 77 positions (< 1e-5 relative)."""
    from model.clip import CLIP, build_clip

    clip = build_clip(random_clip_state_dict(PRESETS["tiny"]), image_size=(32, 32)).eval()
    tokens = tokenize(["a woman in a red coat", "a man with a black backpack and grey shorts",
                       "a photo of * , and she wears white shoes"], 77)
    pseudo = torch.randn(3, clip.arch.text_width)
    lengths = []
    clip.transformer.register_forward_pre_hook(
        lambda module, args: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        trimmed = clip.encode_text(tokens), clip.encode_text_with_pseudo_token(tokens, pseudo)
    longest = int(tokens.argmax(dim=-1).max()) + 1
    assert lengths == [longest, longest] and longest < 20
    # one text of the full context: nothing to cut; shorter tokens were cut on the host
    # (trim_to_bucket) and are taken as they are; longer ones are refused
    long_tokens = tokenize(["person with a backpack " * 20], 77)
    assert clip.trim_padding(long_tokens).shape[1] == 77
    assert clip.trim_padding(tokens[:, :40]).shape[1] == 40
    with pytest.raises(ValueError, match=r"text tokens have shape \(1, 78\)"):
        clip.encode_text(torch.cat([long_tokens, long_tokens[:, :1]], dim=1))
    monkeypatch.setattr(CLIP, "trim_padding", lambda self, tokens: tokens)
    with torch.no_grad():
        full = clip.encode_text(tokens), clip.encode_text_with_pseudo_token(tokens, pseudo)
    assert lengths[2:] == [77, 77]
    for ours, reference in zip(trimmed, full):
        assert relative_error(ours, reference) < 1e-5
    monkeypatch.undo()
    with torch.no_grad():  # an empty batch has nothing to cut
        assert clip.encode_text(tokenize([], 77)).shape == (0, clip.arch.embed_dim)


@pytest.mark.parametrize("causal", [False, True])
def test_last_block_at_the_pooled_positions_equals_the_full_outputs_rows(causal):
    """The transformer asked for one position per sequence computes the last block there
    only; values and every gradient equal the full computation's rows."""
    import copy

    from model.clip import Transformer

    torch.manual_seed(0)
    full = Transformer(64, 2, 4, causal=causal, quick_gelu=True)
    for parameter in full.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    pooled_model = copy.deepcopy(full)
    x = torch.randn(3, 9, 64, requires_grad=True)
    positions = torch.tensor([8, 2, 5]) if causal else torch.zeros(3, dtype=torch.long)
    rows = torch.arange(3)
    reference = full(x)[rows, positions]
    pooled = pooled_model(x, pooled=positions)
    assert pooled.shape == (3, 64)
    assert relative_error(pooled, reference) < 1e-6
    (x_grad,) = torch.autograd.grad(reference.square().sum(), x)
    (pooled_x_grad,) = torch.autograd.grad(pooled.square().sum(), x)
    assert relative_error(pooled_x_grad, x_grad) < 1e-5
    full(x)[rows, positions].square().sum().backward()
    pooled_model(x, pooled=positions).square().sum().backward()
    for (name, a), b in zip(full.named_parameters(), pooled_model.parameters()):
        assert relative_error(b.grad, a.grad) < 1e-5, name


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_presets_load_with_their_sizes(tmp_path, name):
    """A preset's file reads back as the same architecture (the demo's at its 32x16 input,
    the position grid resampled from the file's square one)."""
    torch.save(random_clip_state_dict(PRESETS[name]), tmp_path / "clip.pt")
    model = load_clip(tmp_path / "clip.pt", image_size=(32, 16))
    arch = PRESETS[name]
    assert model.arch.patch_size == arch.patch_size
    assert (model.arch.vision_layers, model.arch.text_layers) == (arch.vision_layers,
                                                                  arch.text_layers)
    assert model.visual.grid_size == (32 // arch.patch_size, 16 // arch.patch_size)
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 3, 32, 16)).shape == (2, arch.embed_dim)


@pytest.mark.parametrize("buckets", [(), (16, 32, 48, 64, 77), (8, 77), (100,)])
def test_tokens_cut_on_the_host_to_a_bucket_give_the_same_features(buckets):
    """``trim_to_bucket`` cuts a batch on the host to the smallest bucket that holds its
    longest text (exactly after it without buckets; the whole row when no bucket is long
    enough); the features, with and without the pseudo word, equal the full context's."""
    from model.clip import build_clip, trim_to_bucket

    clip = build_clip(random_clip_state_dict(PRESETS["tiny"]), image_size=(32, 32)).eval()
    texts = ["a woman in a red coat", "a photo of * , and a man with a black backpack and "
             "grey shorts, white shoes and a cap"]
    tokens = tokenize(texts, 77)
    longest = int(tokens.argmax(dim=-1).max()) + 1
    cut = trim_to_bucket(tokens, buckets)
    expected = min([b for b in buckets if b >= longest], default=77 if buckets else longest)
    assert cut.shape == (2, min(expected, 77))
    pseudo = torch.randn(2, clip.arch.text_width)
    with torch.no_grad():
        for full, ours in ((clip.encode_text(tokens), clip.encode_text(cut)),
                           (clip.encode_text_with_pseudo_token(tokens, pseudo),
                            clip.encode_text_with_pseudo_token(cut, pseudo))):
            assert relative_error(ours, full) < 1e-5
    with pytest.raises(ValueError, match="host"):
        trim_to_bucket(tokens.to("meta"))
    assert trim_to_bucket(tokenize([], 77)).shape == (0, 77)
