#!/usr/bin/env bash
# Issue 21 on the GPU machine: train an EAGLE-3 head for the real Qwen2.5-Coder-1.5B-Instruct by
# self-distillation, then time it against no speculation on real code-edit and chat prompts.
#
# Usage: bash scripts/gpu_eagle_qwen.sh OUT_DIR [train] [bench] [OPTION VALUE ...]
#   train: `dynaspec train-head` into $HEAD_DIR (default /tmp/eagle-qwen15b; kept while the machine is warm)
#   bench: `dynaspec bench --workload code-edit` and `--workload chat` with the head: no spec, k = 1..6,
#          goodput and adaptive lines, each line's greedy tokens checked against no spec's
#   (default: both). Options (defaults): --target /tmp/qwen-1.5b.gguf (scripts/qwen_join.sh puts it there),
#   --head-dir /tmp/eagle-qwen15b, --num-prompts 1312 (every offline prompt), --max-tokens 1024 (~1M
#   self-distilled tokens), --steps 4000, --batch-size 4, --ttt-steps 5, --lr 5e-4, --max-num-seqs 128,
#   --batch-sizes 1,4,16,64, --gen-len 128, --device auto, --dtype auto. A CPU smoke run of the whole script:
#   `... /tmp/o --target smollm2-135m-instruct --device cpu --num-prompts 8 --max-tokens 16 --steps 4
#   --batch-sizes 1 --gen-len 4 --max-num-seqs 4`.
# The 0.5B draft model and n-gram lines on the same prompts: scripts/gpu_qwen_pair.sh in the same session.
# Getting the weights there: the header of scripts/gpu_qwen_pair.sh (26 chunk calls, then join).
# Results: OUT_DIR/eagle-summary.md (train log tail + both bench.md) and OUT_DIR/eagle-results.tar.gz.
set -uo pipefail
out=${1:?usage: gpu_eagle_qwen.sh OUT_DIR [train] [bench] [OPTION VALUE ...]}
shift
target=/tmp/qwen-1.5b.gguf head_dir=/tmp/eagle-qwen15b num_prompts=1312 max_tokens=1024 steps=4000
batch_size=4 ttt_steps=5 lr=5e-4 max_num_seqs=128 batch_sizes=1,4,16,64 gen_len=128 device=auto dtype=auto
parts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target|--head-dir|--num-prompts|--max-tokens|--steps|--batch-size|--ttt-steps|--lr|--max-num-seqs|\
    --batch-sizes|--gen-len|--device|--dtype)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      var=${1#--}; printf -v "${var//-/_}" %s "$2"; shift 2 ;;
    train|bench) parts+=("$1"); shift ;;
    *) echo "error: unknown argument '$1' (parts: train, bench; options: see the header)" >&2; exit 2 ;;
  esac
done
[ ${#parts[@]} -gt 0 ] || parts=(train bench)
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
work=$(mktemp -d /tmp/eagle-out.XXXX)
summary=$work/eagle-summary.md
mkdir -p "$out"
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*" | tee -a "$work/timing.txt"; }
echo "# EAGLE-3 head for $target ($(date -u))" > "$summary"
for part in "${parts[@]}"; do
  if [ "$part" = train ]; then
    stamp "train-head"
    python3 -m dynaspec.cli train-head --model "$target" --out "$head_dir" \
      --workload stdlib,pydoc,code-edit,chat,summarise --num-prompts "$num_prompts" --max-tokens "$max_tokens" \
      --steps "$steps" --batch-size "$batch_size" --ttt-steps "$ttt_steps" --lr "$lr" \
      --max-num-seqs "$max_num_seqs" --device "$device" --dtype "$dtype" > "$work/train.log" 2>&1
    status=$?
    stamp "train-head exit $status"
    { echo; echo "## train-head (exit $status)"; echo '```'; tail -25 "$work/train.log"; echo '```'; } >> "$summary"
  else
    spec=$work/eagle.yaml
    printf 'speculative_config:\n  decoding_type: Eagle\n  max_draft_len: 6\n  speculative_model: %s\n  draft_len_policy: goodput\n' \
      "$head_dir" > "$spec"
    for workload in code-edit chat; do
      stamp "bench $workload"
      python3 -m dynaspec.cli bench --model "$target" --spec-config "$spec" --policy-lines adaptive --ks 0-6 \
        --workload "$workload" --batch-sizes "$batch_sizes" --gen-len "$gen_len" --device "$device" \
        --dtype "$dtype" --no-plots --out-dir "$work/bench-$workload" > "$work/bench-$workload.log" 2>&1
      status=$?
      stamp "bench $workload exit $status"
      { echo; echo "## bench --workload $workload (exit $status)"; cat "$work/bench-$workload/bench.md" 2>/dev/null \
        || tail -20 "$work/bench-$workload.log"; } >> "$summary"
    done
  fi
  { cat "$summary"; echo; echo "## timings"; cat "$work/timing.txt"; } > "$out/eagle-summary.md"
  tar -czf "$out/eagle-results.tar.gz" -C "$work" .
done
cat "$out/eagle-summary.md"
