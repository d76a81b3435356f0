#!/usr/bin/env bash
# SQuAD v2.0 extractive QA: split the v2.0 subset by article (3 train, 1 validates, 1 is scored), pretrain a small
# BERT with masked LM on the Python docs plus the training articles' text, fine-tune its span head with sliding
# windows on the training questions (CLOZE=1: plus synthetic cloze questions cut from the training articles'
# sentences), choose the checkpoint and the no-answer threshold on the validation article, and score it with
# `lmforge eval --task qa` (EM / F1) on the held-out article and on the v1.1 subset, beside the "no answer" and
# first-sentence baselines measured in the same run.
# Run from the repository root:  bash examples/squad/run.sh [OUT]   (default runs/squad)
# Budget: about 15 minutes of one thread's CPU time (MLM_STEPS / QA_STEPS scale it; OMP_NUM_THREADS as you like).
#
# Why this recipe (measured on the validation article, see the notes of the SQuAD example):
# - The checkpoint (--select-by best_f1) and the no-answer threshold are both chosen on a validation *article*
#   (--objective-options.val-squad), never on questions of a training article, whose contexts were trained on.
#   SQuAD v2.0's own evaluation reports the best threshold's scores; here the threshold is chosen on the
#   validation article and then applied, fixed, to the scored one (--no-answer-threshold), so the scored figure is
#   held out. Abstaining everywhere is one of the thresholds, so validation never chooses worse than "no answer"
#   there; whether the scored article gains depends on the model ranking its answerable questions first.
# - The fine-tuning is the first recipe's (950 real questions, 600 steps, lr 1e-3): of the three configurations
#   compared on the validation article it had the best validation best-threshold F1 (48.84 against 48.73 with
#   the cloze questions, 48.57 = "no answer" for the other): all within one question of 210, that is, a tie.
# - CLOZE=1 adds examples/squad/cloze.py's synthetic questions (a sentence's words with a span cut out, the span
#   the answer; half made unanswerable by swapping a word for one the context lacks), 4 candidates a sentence, 3
#   noisy copies: 4,099 synthetic + 950 real. Measured with QA_STEPS=1500 QA_LR=2e-3 (and 1,369 x 600 steps at
#   1e-3): the span loss on them barely falls (train 3.2 -> 2.2), so this 2 x 128 encoder did not learn to match.
# Measured 2026-12-02: no configuration ranked the validation article's answerable questions clearly above its
# unanswerable ones (AUC of the no-answer margin 0.48 to 0.58), so the threshold chosen there abstains on the
# scored article's every question: this recipe ties "no answer" (49.8), it does not beat it.
set -euo pipefail
DATA=${SHARED_DATA:-../shared/data}/squad
OUT=${1:-runs/squad}
MLM_STEPS=${MLM_STEPS:-1000}
QA_STEPS=${QA_STEPS:-600}
QA_LR=${QA_LR:-1e-3}
CLOZE=${CLOZE:-0}
LMFORGE=${LMFORGE:-lmforge}
start=$(date +%s)
python examples/squad/split.py "$DATA" --out "$OUT"
QUESTIONS="$OUT/squad-train.json"
if [ "$CLOZE" = 1 ]; then
    python examples/squad/cloze.py "$OUT/squad-train.json" --out "$OUT/squad-train-cloze.json" --with-real \
        --per-sentence 4 --copies 3
    QUESTIONS="$OUT/squad-train-cloze.json"
fi
$LMFORGE prepare builtin:python-docs "$OUT/pretrain.txt" --tokenizer.kind wordpiece --tokenizer.vocab-size 8000 \
    --val-fraction 0.02 --out "$OUT/data" --overwrite
# MLM on 128-token sequences (the cheap part of BERT's own two-phase recipe), then QA on 256-token windows.
$LMFORGE train --config examples/squad/mlm.yaml --data "$OUT/data" --out "$OUT/bert" --steps "$MLM_STEPS"
$LMFORGE train --config examples/squad/qa.yaml --data "$OUT/data" --init-from "$OUT/bert" --out "$OUT/qa" \
    --objective-options.squad "$QUESTIONS" --objective-options.val-squad "$OUT/squad-val.json" \
    --steps "$QA_STEPS" --optim.lr "$QA_LR"
# The no-answer threshold of the best F1 on the validation article, then the scored article at that threshold.
$LMFORGE eval --task qa --checkpoint "$OUT/qa" --file "$OUT/squad-val.json" --out "$OUT/val"
THRESHOLD=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['best_f1_threshold'])" \
    "$OUT/val/metrics.json")
echo "no-answer threshold chosen on the validation article: $THRESHOLD"
$LMFORGE eval --task qa --checkpoint "$OUT/qa" --file "$OUT/squad-heldout.json" --no-answer-threshold="$THRESHOLD" \
    --out "$OUT/heldout"
$LMFORGE eval --task qa --checkpoint "$OUT/qa" --file "$OUT/squad-v1.1-located.json" --batch-size 1 \
    --out "$OUT/v1.1"
echo "lmforge pipeline wall time: $(( $(date +%s) - start )) s"
