#!/usr/bin/env bash
# SST-2 sentiment: pretrain a small BERT with masked LM on SST-2's training sentences, fine-tune it as a
# classifier, score it on the dev set, and measure the majority-class and TF-IDF + logistic-regression baselines
# on the same split. Run from the repository root:  bash examples/sst2/run.sh [OUT]   (default runs/sst2)
set -euo pipefail
DATA=${SHARED_DATA:-../shared/data}/sst2
OUT=${1:-runs/sst2}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-400}
FINETUNE_STEPS=${FINETUNE_STEPS:-1500}
mkdir -p "$OUT"
start=$(date +%s)
lmforge prepare "$DATA/train.tsv" --read.csv-column sentence --tokenizer.kind wordpiece \
    --tokenizer.vocab-size 8000 --val-fraction 0.02 --out "$OUT/data"
lmforge train --data "$OUT/data" --preset bert-tiny \
    --model.max-seq-len 128 --objective mlm --out "$OUT/bert" --steps "$PRETRAIN_STEPS" --batch-size 64 \
    --seq-len 64 --optim.lr 1e-3 --eval-every 200 --eval-batches 20 --log-every 50
lmforge train --data "$OUT/data" --init-from "$OUT/bert" --objective classification --out "$OUT/classifier" \
    --objective-options.pairs "$DATA/train.tsv" --objective-options.text-column sentence \
    --objective-options.pairs-val-fraction 0.02 --steps "$FINETUNE_STEPS" --batch-size 32 --eval-every 500 \
    --eval-batches 0 --optim.lr 5e-4 --log-every 100 --model.dropout 0.1 --select-by accuracy
lmforge eval --task classification --checkpoint "$OUT/classifier" --file "$DATA/dev.tsv" --text-column content \
    --out "$OUT/dev"
echo "lmforge pipeline wall time: $(( $(date +%s) - start )) s"
python examples/sst2/baselines.py "$DATA" --out "$OUT/baselines.json"
