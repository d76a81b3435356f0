#!/usr/bin/env bash
# SST-2 sentiment: train a small BERT (2 x 128) as a classifier on SST-2's 67k labelled training phrases, score it
# on the dev set, and measure the majority-class and TF-IDF + logistic-regression baselines on the same split.
# Optionally (PRETRAIN_STEPS > 0) pretrain it first with masked LM on the training phrases.
# Run from the repository root:  bash examples/sst2/run.sh [OUT]   (default runs/sst2)
#
# Why this recipe (measured runs: examples/README.md, SST-2; chosen on 689 whole training sentences
# held out with examples/sst2/split.py, every phrase of them left out of training, not on dev):
# - The MLM is correct: against transformers' BertForMaskedLM of the same shape on the same batches
#   (benchmarks/mlm_vs_hf.py) its val loss matches step for step (ppl 780 vs 793 at step 400). Its slow start is
#   BERT's unigram plateau (ppl ~630, masked accuracy 11.5 % after 1,000 steps even at lr 2e-3), on little text:
#   67k phrases, but only ~6.9k distinct sentences, all of which the classifier sees labelled anyway.
# - Measured on the held-out sentences, 1,000 MLM steps (330 s of CPU) before the same fine-tuning *lowered*
#   accuracy (82.3 % vs 82.9 % from random weights), so by default there is no pretraining: the budget goes to
#   fine-tuning, the lever that paid. The old 1,500 x 32 phrases were less than one pass over the labelled
#   phrases; batching phrases of similar length (--objective-options.length-buckets) cuts the padding that was
#   two thirds of every random batch. FINETUNE_STEPS = 3,600 x 32 is about 1.75 passes over the 66.0k phrases
#   (3 minutes of CPU): on the held-out sentences 2 passes scored 82.9 % and 3 passes 81.9 % (the random-phrase
#   val split kept rising: it rewards fitting phrases of sentences seen in training).
# - Mean pooling of the token states (--model.pooling mean) instead of [CLS] through the pooler: 83.9 % against
#   82.9 % on the held-out sentences (same steps), and cheaper.
# Budget: well within 15 minutes of one core's CPU time, all stages (measured: examples/README.md, SST-2).
set -euo pipefail
DATA=${SHARED_DATA:-../shared/data}/sst2
OUT=${1:-runs/sst2}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-0}
PRETRAIN_LR=${PRETRAIN_LR:-2e-3}  # with PRETRAIN_STEPS > 0
WARMUP=${WARMUP:-100}
FINETUNE_STEPS=${FINETUNE_STEPS:-3600}
SEED=${SEED:-0}  # initialisation, data order and dropout of the classifier
LMFORGE=${LMFORGE:-lmforge}
mkdir -p "$OUT"
start=$(date +%s)
$LMFORGE prepare "$DATA/train.tsv" --read.csv-column sentence --tokenizer.kind wordpiece \
    --tokenizer.vocab-size 8000 --val-fraction 0.02 --out "$OUT/data" --overwrite
if [ "$PRETRAIN_STEPS" -gt 0 ]; then
    $LMFORGE train --data "$OUT/data" --preset bert-tiny \
        --model.max-seq-len 128 --objective mlm --out "$OUT/bert" --steps "$PRETRAIN_STEPS" --batch-size 64 \
        --seq-len 64 --optim.lr "$PRETRAIN_LR" --optim.warmup-steps "$WARMUP" --eval-every 500 --eval-batches 20 \
        --log-every 100 --no-tensorboard
    START=(--init-from "$OUT/bert")
else
    START=(--preset bert-tiny --model.max-seq-len 128)
fi
$LMFORGE train --data "$OUT/data" "${START[@]}" --objective classification --out "$OUT/classifier" \
    --objective-options.pairs "$DATA/train.tsv" --objective-options.text-column sentence \
    --objective-options.pairs-val-fraction 0.02 --objective-options.length-buckets 50 --steps "$FINETUNE_STEPS" \
    --batch-size 32 --eval-every 1000 --eval-batches 0 --optim.lr 5e-4 --log-every 200 --model.dropout 0.1 \
    --model.pooling mean \
    --seed "$SEED" --select-by accuracy --no-tensorboard
$LMFORGE eval --task classification --checkpoint "$OUT/classifier" --file "$DATA/dev.tsv" --text-column content \
    --out "$OUT/dev"
echo "lmforge pipeline wall time: $(( $(date +%s) - start )) s"
python examples/sst2/baselines.py "$DATA" --out "$OUT/baselines.json"
