"""A model for inference from any file a person may hold: a checkpoint of either stage
(ours, an export, or the paper's code's), or plain CLIP weights (zero-shot, stage 1)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.stages import Stage, stage_for
from model.clip import read_checkpoint_file
from utils.checkpoint import load_checkpoint
from utils.config import load_config
from utils.errors import UserError


@dataclasses.dataclass
class Loaded:
    model: object            # AdaptModel or TokenModel, in eval mode, on the CPU
    cfg: object              # the resolved config (stored one + overrides)
    stage: Stage
    checkpoint: dict | None  # None for CLIP weights

    @property
    def zero_shot(self) -> bool:
        return self.checkpoint is None


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
