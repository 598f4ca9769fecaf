#!/usr/bin/env bash
# The whole pipeline on CPU in minutes, from a fresh clone (after
# `pip install -r requirements.txt`): the synthetic world (its PEDES sets at three times the
# default number of people, so that a model trained from random weights meets enough
# people to match sketches to photos), a random tiny CLIP in OpenAI's layout, stage 1 on
# synthetic Tri-PEDES, stage 2 on synthetic Market-Sketch-1K, then the test with rank
# pictures and feedback rounds. Data go to data/demo/, everything else to outputs/demo/.
#   bash demo.sh
#   DEMO_PRETRAINED=1 bash demo.sh      # start from checkpoint/ViT-B-16.pt instead
# A second run continues or reuses what the first one finished.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-outputs/demo}
DATA=${DATA:-data/demo}
SCALE=${DEMO_SCALE:-1.0}
ADAPT_EPOCHS=${ADAPT_EPOCHS:-40}
TOKEN_EPOCHS=${TOKEN_EPOCHS:-60}
# One compute thread: the other core prepares the batches (about a quarter faster on 2 cores).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"

echo "== 1/4 synthetic datasets in $DATA"
python -m datasets.synthetic --out "$DATA" --datasets cuhk-pedes icfg-pedes rstpreid \
  --scale "$(python -c "print(3 * float('$SCALE'))")"
python -m datasets.synthetic --out "$DATA" --datasets mask1k --scale "$SCALE"

if [ "${DEMO_PRETRAINED:-0}" = "1" ]; then
  CLIP=checkpoint/ViT-B-16.pt
  [ -f "$CLIP" ] || { echo "error: DEMO_PRETRAINED=1 needs $CLIP (see checkpoint/README.md)" >&2; exit 2; }
  MODEL=(model.pretrained="$CLIP" model.image_size=[224,224] model.freeze_patch_embed=true)
  ADAPT_LR=(train.lr=1e-5 train.lr_start=1e-6 train.lr_end=1e-6)
  TOKEN_LR=(train.lr=1e-5)
else
  CLIP="$OUT/demo-random.pt"
  [ -f "$CLIP" ] || python -m model.random_clip --out "$CLIP" --preset demo
  MODEL=(model.pretrained="$CLIP")
  ADAPT_LR=()
  TOKEN_LR=()
fi

# Continue (or skip) a stage that an earlier run of this script started.
resume_flag() { [ -f "$1/checkpoint_last.pth" ] && echo train.resume=true || echo train.resume=false; }

echo "== 2/4 stage 1: task-oriented knowledge adaptation"
python train_adapt.py --config config/Demo_adapt.yaml "${MODEL[@]}" "${ADAPT_LR[@]}" \
  data.root="$DATA" output_dir="$OUT/adapt" train.epochs="$ADAPT_EPOCHS" \
  "$(resume_flag "$OUT/adapt")"

echo "== 3/4 stage 2: pseudo-word token learning"
python train_token.py --config config/Demo_token.yaml "${MODEL[@]}" "${TOKEN_LR[@]}" \
  data.root="$DATA" output_dir="$OUT/token" train.epochs="$TOKEN_EPOCHS" \
  model.init_from="$OUT/adapt/checkpoint_best.pth" "$(resume_flag "$OUT/token")"

echo "== 4/4 test"
python test.py --checkpoint "$OUT/adapt/checkpoint_best.pth" data.root="$DATA"
python test.py --checkpoint "$OUT/token/checkpoint_best.pth" data.root="$DATA" test.multi_query=true
echo "results: $OUT/adapt/results.json $OUT/token/results.json; pictures: $OUT/token/vis/ $OUT/token/rounds.png"
