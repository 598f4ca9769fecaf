#!/usr/bin/env bash
# Reproduce the paper's tables: zero-shot CLIP (the starting point), Tri-PEDES (stage 1),
# Market-Sketch-1K and PKU-Sketch (x10 trials, mean and std), then one Markdown table of
# everything in $OUT/results.md. A run folder of several seeds (seeds=[...]) is tested seed by
# seed and shown as mean ± std, as the trials are.
#   bash model_test.sh
#   ADAPT_RUN=outputs/my_stage1 bash model_test.sh data.root=/data
#   CLIP= bash model_test.sh                   # without the zero-shot row
set -euo pipefail
cd "$(dirname "$0")"
CLIP=${CLIP-checkpoint/ViT-B-16.pt}
ADAPT_RUN=${ADAPT_RUN:-outputs/TriPEDES_pretrain}
MARKET_RUN=${MARKET_RUN:-outputs/Market_finetune}
PKU_RUN=${PKU_RUN:-outputs/PKU_finetune}
OUT=${OUT:-outputs}
RESULTS=()
if [ -n "$CLIP" ]; then
  python test.py --checkpoint "$CLIP" data.dataset=tri-pedes output_dir="$OUT/zero_shot" "$@"
  RESULTS+=("$OUT/zero_shot/results.json")
fi
python test.py --checkpoint "$ADAPT_RUN" "$@"
python test.py --checkpoint "$MARKET_RUN" "$@"
python test.py --checkpoint "$PKU_RUN" "$@"
python -m engine.report "${RESULTS[@]}" "$ADAPT_RUN/results.json" "$MARKET_RUN/results.json" \
  "$PKU_RUN/results.json" --out "$OUT/results.md"
