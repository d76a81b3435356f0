#!/usr/bin/env bash
# SQuAD v2.0 extractive QA: split the v2.0 subset by article (one article held out), pretrain a small BERT with
# masked LM on the Python docs plus the training articles' text, fine-tune its span head with sliding windows,
# and score it with `lmforge eval --task qa` (EM / F1, v2.0's no-answer threshold) on the held-out article and on
# the v1.1 subset, beside the "no answer" and first-sentence baselines measured in the same run.
# Run from the repository root:  bash examples/squad/run.sh [OUT]   (default runs/squad)
# Budget: about 15 minutes on a quiet 2-core CPU (MLM_STEPS / QA_STEPS scale it; OMP_NUM_THREADS as you like).
set -euo pipefail
DATA=${SHARED_DATA:-../shared/data}/squad
OUT=${1:-runs/squad}
MLM_STEPS=${MLM_STEPS:-1000}
QA_STEPS=${QA_STEPS:-600}
LMFORGE=${LMFORGE:-lmforge}
start=$(date +%s)
python examples/squad/split.py "$DATA" --out "$OUT"
$LMFORGE prepare builtin:python-docs "$OUT/pretrain.txt" --tokenizer.kind wordpiece --tokenizer.vocab-size 8000 \
    --val-fraction 0.02 --out "$OUT/data" --overwrite
# MLM on 128-token sequences (the cheap part of BERT's own two-phase recipe), then QA on 256-token windows.
$LMFORGE train --data "$OUT/data" --preset bert-tiny --objective mlm --out "$OUT/bert" --steps "$MLM_STEPS" \
    --batch-size 32 --seq-len 128 --optim.lr 2e-3 --optim.warmup-steps 100 --eval-every 500 --eval-batches 20 \
    --log-every 100 --no-tensorboard
$LMFORGE train --data "$OUT/data" --init-from "$OUT/bert" --objective extractive_qa --out "$OUT/qa" \
    --objective-options.squad "$OUT/squad-train.json" --objective-options.val-fraction 0.05 \
    --objective-options.doc-stride 128 --steps "$QA_STEPS" --batch-size 16 --optim.lr 1e-3 \
    --optim.warmup-steps 100 --eval-every 200 --eval-batches 0 --log-every 100 --select-by f1 --no-tensorboard
$LMFORGE eval --task qa --checkpoint "$OUT/qa" --file "$OUT/squad-heldout.json" --out "$OUT/heldout"
$LMFORGE eval --task qa --checkpoint "$OUT/qa" --file "$OUT/squad-v1.1-located.json" --batch-size 1 \
    --out "$OUT/v1.1"
echo "lmforge pipeline wall time: $(( $(date +%s) - start )) s"
