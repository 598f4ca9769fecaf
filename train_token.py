"""Stage 2, pseudo-word token learning: from the stage-1 checkpoint (model.init_from), learn
a mapping from a sketch's feature to the word ``*`` of "a photo of * , and {feedback}".

    python train_token.py --config config/Market_finetune.yaml [KEY=VALUE ...]
    python train_token.py --config config/PKU_finetune.yaml data.trials=[1,2,3]
    torchrun --nproc_per_node=2 train_token.py --config config/Market_finetune.yaml
    python train_token.py --config config/Market_finetune.yaml seeds=[1,2,3]

PKU-Sketch trains one model per trial of ``data.trials``, each in output_dir/trial_<t>/.
Several seeds train one run each in output_dir/seed_<s>/ (on PKU-Sketch, seed_<s>/trial_<t>/),
each from the same seed's stage-1 checkpoint when model.init_from names a multi-seed stage-1
run, and end with output_dir/results.json (mean and std over the seeds).
"""
from __future__ import annotations

from engine.runs import train_command
from engine.stages import TokenStage
from utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv=None) -> dict:
    return train_command(argv, __doc__, "config/Market_finetune.yaml", TokenStage())


if __name__ == "__main__":
    main()
