#!/usr/bin/env bash
# Multi30k English -> German in 15 minutes of a 2-core CPU, everything included (tokenizer, training, 4-beam
# evaluation of the 1,000 test_2016 sentences): one BPE tokenizer shared by both languages, a small T5 (3 + 3 layers
# x 128) trained from scratch with the seq2seq objective, scored on test_2016 (flickr) with BLEU / chrF, beside the
# copy-source baseline. Run from the repository root:  bash examples/multi30k/run.sh [OUT]   (default runs/multi30k)
#
# On a 2-core CPU a step's cost is the model's arithmetic (~50 GFLOP/s on one thread, measured), so the budget buys
# a fixed number of token-passes (benchmarks/seq2seq_step_cpu.py shows where a step goes); the choices spend them:
# - length-bucketed batches (--objective-options.length-buckets 100): random batches of these pairs are 55 % padding;
#   batches of similar lengths make a 3 + 3 x 256 step 1.8x cheaper (54 -> 34 s of CPU for 12 steps, measured);
# - BPE 4k shared, not 8k: the head over an 8k vocabulary was a third of a step (forward + backward); 4k costs
#   9 % more tokens per sentence and halves the head;
# - d_model 128, 4 heads, gated MLP 512, 3 + 3 blocks (~2.3 M parameters): 15 minutes of one core are about
#   40 TFLOP, and 3 epochs of a 128-wide model fit in it where a 256-wide one got under 2;
# - T5's own initialisation (the t5 presets' --model.init t5: each matrix N(0, 1/fan_in), queries another
#   1/head_dim, embeddings N(0, 1), as transformers' T5) with T5's d_model**-0.5 scaling of the tied output: against
#   GPT-2's N(0, 0.05), which needed --no-model.scale-decoder-output to learn at all, the same 1,700 steps on one
#   thread give test BLEU 18.92 instead of 10.12 (benchmarks/seq2seq_vs_hf.py: held-out token accuracy after 800
#   steps 41.5 % against 36.6 %, and lmforge's T5 learns exactly as transformers' from the same weights);
# - lr 3e-3 (a model this small learns slowly at 1e-3), 100 warmup steps, cosine to a tenth;
# - 64 pairs a step (~1,900 tokens): more updates of the few the budget allows; dropout 0 (under 4 epochs there is
#   nothing to overfit yet), label smoothing 0.1;
# - STEPS=3000 (~6.6 passes over the pairs), measured end to end on the quiet 2-core machine, 2026-12-03, with
#   torch's default two threads: 8.7 min wall for the whole script (523 s; 1,025 s of CPU), test_2016 BLEU 21.17,
#   chrF 44.25 (copy-source 0.48 / 16.3); SEED=1 on one thread: BLEU 20.65 in 16.0 min of CPU. That machine ran
#   13,000 tokens/s on two threads; the one of 2026-12-02 ran 7,768, at which these steps would take an estimated
#   14-15 minutes (not measured). With one thread only, take STEPS=2100: 14.6 min of CPU, BLEU 19.17 (2026-12-02).
# The options themselves are in examples/multi30k/t5.yaml.
set -euo pipefail
DATA=${SHARED_DATA:-../shared/data}/multi30k
OUT=${1:-runs/multi30k}
STEPS=${STEPS:-3000}
SEED=${SEED:-0}  # initialisation and data order
WARMUP=${WARMUP:-100}
LOG_EVERY=${LOG_EVERY:-50}
LMFORGE=${LMFORGE:-lmforge}
start=$(date +%s)
python examples/multi30k/make_pairs.py "$DATA" --out "$OUT"
$LMFORGE prepare "$OUT/train_text.txt" --tokenizer.kind bpe --tokenizer.vocab-size 4000 --out "$OUT/data" \
    --overwrite
$LMFORGE train --config examples/multi30k/t5.yaml --data "$OUT/data" --objective-options.pairs "$OUT/train.tsv" \
    --out "$OUT/t5" --steps "$STEPS" --seed "$SEED" --optim.warmup-steps "$WARMUP" --log-every "$LOG_EVERY"
$LMFORGE eval --task translation --checkpoint "$OUT/t5" --file "$OUT/test_2016.tsv" --max-new-tokens 64 \
    --max-source-len 48 --batch-size 64 --num-beams 4 --out "$OUT/test"
echo "lmforge pipeline wall time: $(( $(date +%s) - start )) s"
