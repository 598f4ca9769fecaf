"""Stage 1, task-oriented knowledge adaptation: fine-tune CLIP on Tri-PEDES so that photos,
sketches and texts share one space.

    python train_adapt.py --config config/TriPEDES_pretrain.yaml [KEY=VALUE ...]
    torchrun --nproc_per_node=4 train_adapt.py --config config/TriPEDES_pretrain.yaml
    python train_adapt.py --config config/TriPEDES_pretrain.yaml \
        output_dir=outputs/x train.resume=true
"""
from __future__ import annotations

from engine.stages import AdaptStage
from engine.trainer import Trainer
from utils import distributed
from utils.config import config_from_command_line
from utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv=None) -> dict:
    cfg, _ = config_from_command_line(argv, __doc__, "config/TriPEDES_pretrain.yaml")
    stage = AdaptStage()
    stage.check_dataset(cfg)
    try:
        record = Trainer(cfg, stage).fit()
    except BaseException:
        distributed.cleanup(wait=False)
        raise
    distributed.cleanup()
    return record


if __name__ == "__main__":
    main()
