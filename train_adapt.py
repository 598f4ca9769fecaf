"""Stage 1, task-oriented knowledge adaptation: fine-tune CLIP on Tri-PEDES so that photos,
sketches and texts share one space.

    python train_adapt.py --config config/TriPEDES_pretrain.yaml [KEY=VALUE ...]
    torchrun --nproc_per_node=4 train_adapt.py --config config/TriPEDES_pretrain.yaml
    python train_adapt.py --config config/TriPEDES_pretrain.yaml \
        output_dir=outputs/x train.resume=true
    python train_adapt.py --config config/TriPEDES_pretrain.yaml seeds=[1,2,3]

Several seeds train one run each in output_dir/seed_<s>/ and end with output_dir/results.json
(mean and std over the seeds).
"""
from __future__ import annotations

from engine.runs import train_command
from engine.stages import AdaptStage
from utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv=None) -> dict:
    return train_command(argv, __doc__, "config/TriPEDES_pretrain.yaml", AdaptStage())


if __name__ == "__main__":
    main()
