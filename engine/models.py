"""A model for inference from any file a person may hold: a checkpoint of either stage
(ours, an export, or the paper's code's), or plain CLIP weights (zero-shot, stage 1); and
its encoders with the interface of the ONNX runner (``engine.onnx_runtime.OnnxEncoders``)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from datasets.transforms import eval_transform
from engine.evaluation import encode_images
from engine.stages import Stage, stage_for
from model.clip import read_checkpoint_file
from model.token import TokenModel
from model.tokenizer import tokenize
from utils.checkpoint import load_checkpoint
from utils.config import load_config
from utils.errors import UserError
from utils.precision import autocast, inference_dtype


@dataclasses.dataclass
class Loaded:
    model: object            # AdaptModel or TokenModel, in eval mode, on the CPU
    cfg: object              # the resolved config (stored one + overrides)
    stage: Stage
    checkpoint: dict | None  # None for CLIP weights

    @property
    def zero_shot(self) -> bool:
        return self.checkpoint is None


def checkpoint_file(path: Path) -> Path:
    """A checkpoint file, or a run folder's ``checkpoint_best.pth``."""
    if path.is_dir():
        best = path / "checkpoint_best.pth"
        if best.is_file():
            return best
        if any(path.glob("trial_*/checkpoint_best.pth")):
            raise UserError(f"{path} is a run folder of trials: give one trial's checkpoint, "
                            f"such as {path / 'trial_1' / 'checkpoint_best.pth'}")
        raise UserError(f"{path} holds no checkpoint_best.pth; give a checkpoint file")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def holds_clip_weights(path: Path) -> bool:
    """Whether ``path`` is a file of CLIP weights rather than a checkpoint of a run."""
    try:
        state = read_checkpoint_file(path)
    except UserError:
        return False
    return "visual.conv1.weight" in state and "token_embedding.weight" in state


def load_for_inference(path: str | Path, overrides=(), expected_stage: str | None = None
                       ) -> Loaded:
    """The model in ``path`` with its config (``overrides`` as KEY=VALUE). CLIP weights make
    a stage-1 model as CLIP is (``expected_stage="token"`` refuses them)."""
    path = Path(path)
    try:
        checkpoint = load_checkpoint(path, expected_stage)
    except UserError:
        if not holds_clip_weights(path):
            raise
        if expected_stage == "token":
            raise UserError(f"{path} holds CLIP weights; composing a sketch with text needs a "
                            "stage-2 checkpoint (train_token.py)") from None
        cfg = load_config(None, [*overrides, f"model.pretrained={path}"])
        stage = stage_for("adapt")
        return Loaded(stage.zero_shot_model(cfg).eval(), cfg, stage, None)
    cfg = load_config(None, overrides, base=checkpoint["config"])
    stage = stage_for(checkpoint["stage"])
    return Loaded(stage.model_from_checkpoint(checkpoint, cfg, str(path)).eval(), cfg, stage,
                  checkpoint)


class TorchEncoders:
    """The image, text and (stage 2) query encoders of a PyTorch model on ``device``, called
    as ``engine.onnx_runtime.OnnxEncoders`` is, so that search takes either. Features come
    back as float32 tensors on the CPU; the model runs under ``test.amp``'s autocast."""

    def __init__(self, model, cfg, device: torch.device):
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = device
        self.transform = eval_transform(cfg)
        self.dtype = inference_dtype(device, cfg)

    @property
    def composes(self) -> bool:
        """Whether the model composes a sketch with text (a stage-2 model)."""
        return isinstance(self.model, TokenModel)

    @torch.no_grad()
    def encode_images(self, images: Sequence, normalize: bool = True, num_workers: int = 0,
                      load_truncated_images: bool = True) -> torch.Tensor:
        """Features [N, E] of image files (read and prepared as evaluation reads them,
        ``test.batch_size`` at a time) or of PIL images. ``normalize``: unit length, for
        ranking photos or a sketch alone; raw for ``encode_query``."""
        encode = self.model.encode_image if normalize else self.model.clip.encode_image
        if all(isinstance(image, (str, Path)) for image in images):
            return encode_images(encode, [Path(image) for image in images], self.transform,
                                 self.device, self.cfg.test.batch_size, num_workers=num_workers,
                                 desc="gallery", dtype=self.dtype,
                                 load_truncated_images=load_truncated_images).cpu()
        pixels = torch.stack([self.transform(image) for image in images]).to(self.device)
        with autocast(self.device, self.dtype):
            return encode(pixels).float().cpu()  # [N, E]

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised features [B, E] of ``texts`` (the text tower alone)."""
        tokens = tokenize(list(texts), self.model.clip.context_length).to(self.device)
        with autocast(self.device, self.dtype):
            return self.model.encode_text(tokens).float().cpu()

    def query_text(self, feedback: str) -> str:
        """The composed query's text (``TokenModel.query_text``)."""
        return self.model.query_text(feedback)

    @torch.no_grad()
    def encode_query(self, sketch_feats: torch.Tensor, feedback: Sequence[str]) -> torch.Tensor:
        """Normalised composed-query features [B, E] from raw sketch features [B, E] and one
        feedback text per sketch ("" for the sketch alone), as ``TokenModel.encode_query``."""
        sketch_feats = sketch_feats.to(self.device)
        with autocast(self.device, self.dtype):
            return self.model.encode_query(sketch_feats, list(feedback)).float().cpu()
