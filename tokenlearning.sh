#!/usr/bin/env bash
# Stage 2, pseudo-word token learning: Market-Sketch-1K, then PKU-Sketch (all trials of
# data.trials, one model each). Both start from the stage-1 checkpoint named in their
# configs (model.init_from).
#   bash tokenlearning.sh
#   GPUS=2 bash tokenlearning.sh model.init_from=outputs/TriPEDES_pretrain/checkpoint_best.pth
#   bash tokenlearning.sh seeds=[1,2,3]         # each seed from stage 1's run of that seed
set -euo pipefail
cd "$(dirname "$0")"
GPUS=${GPUS:-1}
MARKET_CONFIG=${MARKET_CONFIG:-config/Market_finetune.yaml}
PKU_CONFIG=${PKU_CONFIG:-config/PKU_finetune.yaml}
torchrun --standalone --nproc_per_node="$GPUS" train_token.py --config "$MARKET_CONFIG" "$@"
torchrun --standalone --nproc_per_node="$GPUS" train_token.py --config "$PKU_CONFIG" "$@"
