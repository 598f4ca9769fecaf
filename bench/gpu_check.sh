#!/usr/bin/env bash
# Checks and benchmarks for a machine with a CUDA GPU; about 6 minutes on one H100 (QUICK_SUITE=0).
#
#   bash bench/gpu_check.sh                 # JSON lines to a temporary file (and stdout)
#   OUT=/some/dir bash bench/gpu_check.sh   # ... and to /some/dir/bench.jsonl
#
# 1. the tests marked cuda, then the quick (not slow) part of the CPU suite on this machine,
#    where device=auto now means CUDA (QUICK_SUITE=0 skips it);
# 2. one training step benchmark per stage at ViT-B/16 (random weights, made first),
#    224x224, batch 60, fp16 autocast (the recipe's); stage 1 also the reference
#    implementation's way (extra soft-target pass + attention with materialised weights),
#    and the paper's contrastive batch of 240 on this one GPU: 4 accumulated micro-batches
#    of 60 (peak memory against the plain batch of 60); compiled (the default on CUDA),
#    eager (train.compile=false) and with CUDA graphs (train.compile_mode=reduce-overhead);
#    mfu counts the useful FLOPs, mfu_executed also accumulation's gradient-free pass;
# 3. the stage-1 step profiled (--profile): time by category and the achieved TFLOP/s
#    against a bf16 matmul peak measured on this GPU, in bf16 at batch 60;
# 4. the training loop end to end (bench.epoch): samples/s of the real loader alone, of the
#    step alone and of both, with 8 and 16 loader processes, on synthetic Tri-PEDES at
#    DATA_SCALE (2) times its default size, the paper's batch (4 x 60 accumulated);
# 5. retrieval evaluation at 2,000 x 10,000 with encoder throughput, on CUDA.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    JSONL="$OUT/bench.jsonl"
else
    JSONL="$WORK/bench.jsonl"
fi
STEPS=${STEPS:-20}
BATCH=${BATCH:-60}
DATA_SCALE=${DATA_SCALE:-2}

section() { printf '\n== %s (%ds)\n' "$1" "$((SECONDS - started))"; }

section "device"
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

section "tests marked cuda"
status=0
timeout 120 python -m pytest -q -m cuda || status=$?
# 5: nothing carries the mark (not an error here)
if [[ $status -ne 0 && $status -ne 5 ]]; then exit "$status"; fi

if [[ "${QUICK_SUITE:-1}" != 0 ]]; then
    section "quick CPU suite with CUDA present"
    timeout 240 python -m pytest -q -x -m "not slow and not cuda"
fi

section "random ViT-B/16"
CLIP="$WORK/vitb16-random.pt"
python -m model.random_clip --out "$CLIP" --preset vit-b-16

COMMON=(--steps "$STEPS" --warmup 3 --batch-size "$BATCH" --jsonl "$JSONL"
        device=cuda "model.pretrained=$CLIP" "model.image_size=[224,224]")

section "train step: stage 1 (adapt), ours: compiled (the default on CUDA)"
timeout 300 python -m bench.train_step --stage adapt "${COMMON[@]}"

section "train step: stage 1, eager (train.compile=false; the default before)"
timeout 180 python -m bench.train_step --stage adapt "${COMMON[@]}" train.compile=false

section "train step: stage 1, compiled with CUDA graphs (train.compile_mode=reduce-overhead)"
timeout 300 python -m bench.train_step --stage adapt "${COMMON[@]}" \
    train.compile_mode=reduce-overhead

section "train step: stage 1 (adapt), reference way"
timeout 180 python -m bench.train_step --stage adapt "${COMMON[@]}" \
    loss.separate_soft_target_pass=true --reference-attention

section "train step: stage 1, the paper's batch: 4 x 60 accumulated"
timeout 300 python -m bench.train_step --stage adapt "${COMMON[@]}" --steps 5 --accum-steps 4

section "train step: stage 1 profiled, bf16"
timeout 180 python -m bench.train_step --stage adapt "${COMMON[@]}" --steps 5 --profile \
    train.amp_dtype=bfloat16

section "train step: stage 2 (token)"
timeout 180 python -m bench.train_step --stage token "${COMMON[@]}" model.init_from=null

section "end to end: the loader alone, the step alone and both (synthetic Tri-PEDES, scale $DATA_SCALE)"
DATA="$WORK/data"
timeout 300 python -m datasets.synthetic --out "$DATA" --scale "$DATA_SCALE" --workers 16 \
    --datasets cuhk-pedes icfg-pedes rstpreid > /dev/null
timeout 420 python -m bench.epoch --stage adapt --workers 8,16 --steps 10 --warmup 3 \
    --jsonl "$JSONL" device=cuda "model.pretrained=$CLIP" "model.image_size=[224,224]" \
    "train.batch_size=$BATCH" "data.root=$DATA"

section "evaluation and encoders"
timeout 180 python -m bench.eval --device cuda --queries 2000 --gallery 10000 --encoders \
    --clip "$CLIP" --encoder-repeats 10 --jsonl "$JSONL"

section "done"
echo "JSON lines: $JSONL"
cat "$JSONL"
