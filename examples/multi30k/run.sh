#!/usr/bin/env bash
# Multi30k English -> German: one BPE tokenizer shared by both languages, a small T5 (3 + 3 layers x 256) trained
# from scratch with the seq2seq objective, scored on test_2016 (flickr) with BLEU / chrF and 4 beams, beside the
# copy-source baseline. Run from the repository root:  bash examples/multi30k/run.sh [OUT]   (default runs/multi30k)
#
# What a from-scratch translation Transformer this small needs, and what the recipe gives it:
# - a shared subword vocabulary small enough for 29k pairs: BPE 8k on both sides (German compounds split);
# - width before depth: d_model 256, 4 heads, gated MLP 768, 3 encoder + 3 decoder blocks (6.8 M parameters);
# - regularisation for a small corpus: dropout 0.1, label smoothing 0.1 (the Transformer paper's);
# - lr warmup then decay: 400 warmup steps to 1e-3, cosine down to a tenth;
# - large batches of short sentences: 128 pairs, about 2,000 target tokens per step;
# - enough epochs: STEPS=3000 x 128 pairs is 13 passes over the 29k training pairs;
# - beam search at test time: 4 beams.
# Budget: STEPS is the knob; measured steps/s are in examples/README.md (choose STEPS = 15 min x steps/s on a
# quiet 2-core machine; the default is the lead's full run, not a 15-minute one on a loaded box).
set -euo pipefail
DATA=${SHARED_DATA:-../shared/data}/multi30k
OUT=${1:-runs/multi30k}
STEPS=${STEPS:-3000}
WARMUP=${WARMUP:-400}
LOG_EVERY=${LOG_EVERY:-50}
LMFORGE=${LMFORGE:-lmforge}
start=$(date +%s)
python examples/multi30k/make_pairs.py "$DATA" --out "$OUT"
$LMFORGE prepare "$OUT/train_text.txt" --tokenizer.kind bpe --tokenizer.vocab-size 8000 --out "$OUT/data" \
    --overwrite
$LMFORGE train --data "$OUT/data" --preset t5-tiny --model.d-model 256 --model.n-head 4 --model.n-layer 3 \
    --model.n-decoder-layer 3 --model.d-ff 768 --model.max-seq-len 64 --model.dropout 0.1 --objective seq2seq \
    --objective-options.pairs "$OUT/train.tsv" --objective-options.pairs-val-fraction 0.01 \
    --objective-options.max-source-len 48 --objective-options.max-target-len 48 \
    --objective-options.label-smoothing 0.1 --out "$OUT/t5" --steps "$STEPS" --batch-size 128 --optim.lr 1e-3 \
    --optim.warmup-steps "$WARMUP" --optim.schedule cosine --optim.min-lr-ratio 0.1 --eval-every 500 --eval-batches 0 \
    --log-every "$LOG_EVERY" --checkpoint-every 500 --no-tensorboard
$LMFORGE eval --task translation --checkpoint "$OUT/t5" --file "$OUT/test_2016.tsv" --max-new-tokens 64 \
    --max-source-len 48 --batch-size 64 --num-beams 4 --out "$OUT/test"
echo "lmforge pipeline wall time: $(( $(date +%s) - start )) s"
