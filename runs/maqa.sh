#!/usr/bin/env bash
# The real experiment: MAQA, AraBERT severity classifier, ten language models and four instruct
# variants, each zero-shot, fine-tuned with uniform and balanced severity weights and with the
# severity curriculum, plus MBR selection over the fine-tuned runs, evaluated overall and per
# severity class; the paper's model x method table over everything at the end ($OUT/table/table.md).
#
# Nothing is downloaded: put these local folders (Hugging Face layout, safetensors) under $MODELS
# first, and MAQA's ds5b.csv under $DATA:
#   $MODELS/bert-base-arabertv02            the classifier's encoder
#   $MODELS/bert-base-multilingual-cased    the BERTScore backbone (layer 9, bert-score's Arabic default)
#   the ten language models (LMS; docs/models.md "Supported architectures" gives sizes and memory):
#   $MODELS/aragpt2-base    aubmindlab/aragpt2-base        GPT-2, 135M (the paper's)
#   $MODELS/aragpt2-medium  aubmindlab/aragpt2-medium      GPT-2, 369M (the paper's)
#   $MODELS/aragpt2-large   aubmindlab/aragpt2-large       Grover, 792M
#   $MODELS/aragpt2-mega    aubmindlab/aragpt2-mega        Grover, 1.46B
#   $MODELS/qwen2.5-0.5b    Qwen/Qwen2.5-0.5B              Qwen2, 494M (the paper's)
#   $MODELS/qwen2.5-1.5b    Qwen/Qwen2.5-1.5B              Qwen2, 1.54B
#   $MODELS/qwen3-0.6b      Qwen/Qwen3-0.6B-Base           Qwen3, 596M
#   $MODELS/qwen3-1.7b      Qwen/Qwen3-1.7B-Base           Qwen3, 1.72B
#   $MODELS/llama-3.2-1b    meta-llama/Llama-3.2-1B        Llama-3 RoPE, 1.24B
#   $MODELS/gemma-3-1b      google/gemma-3-1b-pt           Gemma-3 text, 1.00B
#   and four instruct variants (CHAT_LMS), trained and evaluated in their own chat template
#   (--prompt-format chat, docs/prompts.md), zero-shot included:
#   $MODELS/qwen2.5-0.5b-instruct  Qwen/Qwen2.5-0.5B-Instruct  Qwen2, 494M
#   $MODELS/qwen3-0.6b-chat        Qwen/Qwen3-0.6B             Qwen3, 596M (thinking off)
#   $MODELS/llama-3.2-1b-instruct  meta-llama/Llama-3.2-1B-Instruct  Llama-3 RoPE, 1.24B
#   $MODELS/gemma-3-1b-it          google/gemma-3-1b-it        Gemma-3 text, 1.00B
#   LMS="aragpt2-base qwen3-0.6b" CHAT_LMS="" bash runs/maqa.sh runs a subset.
# A folder with only pytorch_model.bin: python tools/convert_bin_to_safetensors.py FOLDER (once).
#
# Usage:  NGPU=8 bash runs/maqa.sh            (NGPU=1 for one GPU)
# Each step is resumable: train_lm.py continues from <out>/last when it exists, evaluate.py from the
# batches in .<out>.parts/ (docs/evaluation-at-scale.md).
# Every evaluation generates for the same SAMPLE test rows (evaluate.py --sample: stratified by severity,
# at least SAMPLE_MIN per class, overall numbers re-weighted to the split's mix); SAMPLE=0: the whole
# split (~43,000 rows). COMPILE=1 adds --compile (a compiled decode step; eager is the reference).
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-models}
DATA=${DATA:-data/maqa}
OUT=${OUT:-out/maqa}
NGPU=${NGPU:-1}
STEPS=${STEPS:-10000}
SAMPLE=${SAMPLE:-5000}
SAMPLE_MIN=${SAMPLE_MIN:-500}
SAMPLE_ARGS=""; [ "$SAMPLE" != 0 ] && SAMPLE_ARGS="--sample $SAMPLE --sample-seed 0 --sample-min-per-class $SAMPLE_MIN"
[ "${COMPILE:-0}" = 1 ] && SAMPLE_ARGS="$SAMPLE_ARGS --compile"
PY=${PY:-.venv/bin/python}
# torch >= 2.5 reuses the rendezvous store across restarts, and restarted workers can read stale
# addresses (pytorch/pytorch#135712); this keeps --max-restarts reliable
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
TORCHRUN="$PY -m torch.distributed.run --standalone --nproc_per_node $NGPU --max-restarts 3"
mkdir -p "$OUT"

# 1. rows, splits and rule-based silver labels (MAQA's text is already normalized)
[ -f "$OUT/labeled.jsonl" ] || $PY prepare_data.py --data "$DATA/ds5b.csv" --out "$OUT/labeled.jsonl"

# 2. the AraBERT severity classifier (AraBERT v2 preprocessing is applied automatically)
[ -f "$OUT/classifier/metrics.json" ] || $PY train_classifier.py --data "$OUT/labeled.jsonl" \
    --model "$MODELS/bert-base-arabertv02" --out "$OUT/classifier" --epochs 4 --batch-size 32 --lr 3e-5 --device cuda

# 3. calibrated severity_probs for all rows, on every GPU
[ -f "$OUT/scored.jsonl" ] || $TORCHRUN score_severity.py --data "$OUT/labeled.jsonl" \
    --model "$OUT/classifier" --out "$OUT/scored.jsonl" --batch-size 256

# 4-5. each language model with uniform (plain cross-entropy) and balanced severity weights
LMS=${LMS:-"aragpt2-base aragpt2-medium aragpt2-large aragpt2-mega qwen2.5-0.5b qwen2.5-1.5b qwen3-0.6b qwen3-1.7b llama-3.2-1b gemma-3-1b"}
CHAT_LMS=${CHAT_LMS-"qwen2.5-0.5b-instruct qwen3-0.6b-chat llama-3.2-1b-instruct gemma-3-1b-it"}
EVAL_ARGS="--data $OUT/scored.jsonl --split test --bertscore-model $MODELS/bert-base-multilingual-cased --bertscore-layer 9"
for lm in $LMS $CHAT_LMS; do
  # the prompt format: plain for base models, the model's own chat template for the instruct variants
  fmt="--prompt-format plain"; case " $CHAT_LMS " in *" $lm "*) fmt="--prompt-format chat";; esac
  # zero-shot: the model as it is, with the same prompt format (the paper's gains start here)
  [ -f "$OUT/$lm-zeroshot-eval/metrics.json" ] || $TORCHRUN evaluate.py --model "$MODELS/$lm" $EVAL_ARGS $fmt \
      --max-new-tokens 256 --batch-size 64 $SAMPLE_ARGS --out "$OUT/$lm-zeroshot-eval"
  for weights in uniform balanced curriculum; do
    # curriculum: stages mild, moderate, critical (cumulative), plain cross-entropy inside each
    flags="--weights $weights"; [ "$weights" = curriculum ] && flags="--weights uniform --curriculum cumulative"
    run="$OUT/$lm-$weights"
    $TORCHRUN train_lm.py --model "$MODELS/$lm" --data "$OUT/scored.jsonl" $flags $fmt \
        --out "$run" --max-steps "$STEPS" --batch-size 16 --grad-accum $((32 / NGPU > 0 ? 32 / NGPU : 1)) \
        --max-len 512 --lr 5e-5 --eval-every 500 --save-every 500
    [ -f "$run-eval/metrics.json" ] || $TORCHRUN evaluate.py --model "$run/best" --data "$OUT/scored.jsonl" \
        --split test --bertscore-model "$MODELS/bert-base-multilingual-cased" --bertscore-layer 9 $fmt \
        --max-new-tokens 256 --batch-size 64 $SAMPLE_ARGS --out "$run-eval"
  done
  # MBR selection over the three fine-tuned runs (no reference used); the oracle is an upper bound
  [ -f "$OUT/$lm-mbr-eval/metrics.json" ] || $PY evaluate.py --select mbr "$OUT/$lm-uniform-eval" \
      "$OUT/$lm-balanced-eval" "$OUT/$lm-curriculum-eval" $EVAL_ARGS --out "$OUT/$lm-mbr-eval" --device cuda
  $PY evaluate.py --compare "$OUT/$lm-uniform-eval" "$OUT/$lm-balanced-eval" "$OUT/$lm-curriculum-eval" \
      "$OUT/$lm-mbr-eval" "$OUT/$lm-zeroshot-eval" --out "$OUT/$lm-compare" --plot
done
# the paper's table: one row per model, one column per method (zero-shot, plain, weighted, curriculum, selection)
$PY evaluate.py --compare "$OUT"/*-uniform-eval "$OUT"/*-balanced-eval "$OUT"/*-curriculum-eval "$OUT"/*-mbr-eval \
    "$OUT"/*-zeroshot-eval --out "$OUT/table" --plot
echo "comparison tables: $OUT/*-compare/compare.md; the model x method table: $OUT/table/table.md"
