"""Stage 2, pseudo-word token learning: from the stage-1 checkpoint (model.init_from), learn
a mapping from a sketch's feature to the word ``*`` of "a photo of * , and {feedback}".

    python train_token.py --config config/Market_finetune.yaml [KEY=VALUE ...]
    python train_token.py --config config/PKU_finetune.yaml data.trials=[1,2,3]
    torchrun --nproc_per_node=2 train_token.py --config config/Market_finetune.yaml

PKU-Sketch trains one model per trial of ``data.trials``, each in output_dir/trial_<t>/.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

from engine.stages import TokenStage
from engine.trainer import Trainer
from utils import distributed
from utils.config import config_from_command_line
from utils.errors import exit_on_user_error

TRIAL_DATASETS = ("pku-sketch",)


def trial_configs(cfg) -> list:
    """[(trial, config)]: one per PKU-Sketch trial (own output_dir), else [(None, cfg)]."""
    if cfg.data.dataset not in TRIAL_DATASETS:
        return [(None, cfg)]
    runs = []
    for trial in cfg.data.trials:
        trial_cfg = copy.deepcopy(cfg)
        trial_cfg.output_dir = str(Path(cfg.output_dir) / f"trial_{trial}")
        # Resuming a multi-trial run: trials not begun yet start afresh.
        if cfg.train.resume and not (Path(trial_cfg.output_dir) / "checkpoint_last.pth").exists():
            trial_cfg.train.resume = False
        runs.append((trial, trial_cfg))
    return runs


@exit_on_user_error
def main(argv=None) -> dict:
    cfg, _ = config_from_command_line(argv, __doc__, "config/Market_finetune.yaml")
    stage = TokenStage()
    stage.check_dataset(cfg)
    results = {}
    try:
        for trial, trial_cfg in trial_configs(cfg):
            if trial is not None:
                logging.getLogger(__name__).info("PKU-Sketch trial %d -> %s", trial,
                                                 trial_cfg.output_dir)
            results[trial] = Trainer(trial_cfg, stage, trial).fit()
    except BaseException:
        distributed.cleanup(wait=False)
        raise
    distributed.cleanup()
    return results


if __name__ == "__main__":
    main()
