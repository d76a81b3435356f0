#!/usr/bin/env bash
# Multi30k English -> German: a tokenizer on both languages, a small T5 trained from scratch with the seq2seq
# objective, scored on test_2016 (flickr) with BLEU / chrF, beside the copy-source baseline.
# Run from the repository root:  bash examples/multi30k/run.sh [OUT]   (default runs/multi30k)
set -euo pipefail
DATA=${SHARED_DATA:-../shared/data}/multi30k
OUT=${1:-runs/multi30k}
STEPS=${STEPS:-1500}
start=$(date +%s)
python examples/multi30k/make_pairs.py "$DATA" --out "$OUT"
lmforge prepare "$OUT/train_text.txt" --tokenizer.kind bpe --tokenizer.vocab-size 8000 --out "$OUT/data"
lmforge train --data "$OUT/data" --preset t5-tiny --model.max-seq-len 64 --objective seq2seq \
    --objective-options.pairs "$OUT/train.tsv" --objective-options.pairs-val-fraction 0.01 \
    --objective-options.max-source-len 48 --objective-options.max-target-len 48 --out "$OUT/t5" \
    --steps "$STEPS" --batch-size 64 --optim.lr 3e-3 --eval-every 500 --eval-batches 0 --log-every 50 \
    --checkpoint-every 100
lmforge eval --task translation --checkpoint "$OUT/t5" --file "$OUT/test_2016.tsv" --max-new-tokens 64 \
    --max-source-len 48 --batch-size 64 --out "$OUT/test"
echo "lmforge pipeline wall time: $(( $(date +%s) - start )) s"
