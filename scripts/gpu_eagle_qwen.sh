#!/usr/bin/env bash
# Issue 21 on the GPU machine: train an EAGLE-3 head for the real Qwen2.5-Coder-1.5B-Instruct by
# self-distillation, then time it against no speculation, the 0.5B draft model and n-gram on real prompts.
#
# Usage: bash scripts/gpu_eagle_qwen.sh OUT_DIR [train] [code-edit] [chat] [OPTION VALUE ...]
#   train: join the carried pair (scripts/qwen_join.sh; the chunks as in scripts/gpu_qwen_pair.sh's header),
#          convert both GGUFs (in parallel; only the 1.5B, from chunks 08..27, when --drafters has no draft-model), then `dynaspec train-head` into $HEAD_DIR (default
#          /tmp/eagle-qwen15b; kept while the machine is warm), told to end optimizing --deadline seconds
#          after this script started (its --time-limit: answering stops at half of it, and it cuts its step
#          count to fit).
#   carried-head: instead of `train`: join and convert the pair as `train` does and unpack a head trained in an
#          earlier session (scripts/head_xfer.sh: 4 chunks of .xfer-head carried one a call after the pair's)
#          into $HEAD_DIR. ~2 min instead of ~9.
#   export-head: the trained head back to this machine for a later session's `carried-head` (a head costs ~9 device
#          minutes to train, ~30 s to carry): the first call writes it as 16 MB parts (scripts/head_xfer.sh export)
#          and each call puts the next 4 files not yet sent into OUT_DIR, beside the summary's 2 (what comes back
#          is capped near 64 MiB: on 2026-12-07 the 6th part of a call was left out and had to be copied by hand);
#          repeat until it says all were sent, gather the files here and run `head_xfer.sh pack`.
#          `train` sends the first 4 itself. (An ignored .xfer-head/ survives only where the checkout does: the session
#          of 2026-12-07 10:34 UTC started from a fresh checkout without it: a head is trained again in each session.)
#   train-more: train the head of `train` for --deadline seconds more (a later call on the same warm machine)
#          on the answers `train` saved to $EXAMPLES (/tmp/eagle-examples.safetensors): nothing answered again.
#   code-edit, chat: on that workload, three `dynaspec bench` runs over the same prompts and batch sizes
#          (one card, one call): the head (no spec, k = 1..6, the goodput policy as the schedule line and the
#          adaptive line), the 0.5B draft model (--draft-ks) and n-gram (--ngram-ks); each line's greedy
#          tokens checked against its run's no spec; scripts/drafter_compare.py puts them in one table.
#   (default: train code-edit chat; each workload is ~5 min, so a device call takes train, or one workload.)
#   Options (defaults): --target /tmp/qwen-1.5b.gguf, --draft /tmp/qwen-0.5b.gguf, --head-dir /tmp/eagle-qwen15b,
#   --num-prompts 2970 (every offline prompt), --answers-per-prompt 3, --temperature 0.8 (sampled
#   answers: 1152 greedy answers were 0.38M tokens on 2026-12-05; 1,312 prompts x 3 gave 1.04M tokens in 136 s on
#   2026-12-06, and a head whose held-out accuracy stopped at 0.61 while its training loss kept falling, so more
#   distinct prompts; 2,970 x 2 gave 1.69M tokens in 144 s, under the half of the time limit answering may take,
#   and 2,677 -> 3,915 -> 5,268 steps on them moved held-out depth 1 only 0.69 -> 0.71 -> 0.72: more answers
#   now, ~2.5M tokens in ~215 s), --max-tokens 1024, --steps 12000, --batch-size 8, --ttt-steps 5,
#   --draft-vocab-size 32000 (EAGLE-3's draft vocabulary; 0: the target's lm_head, as the first run, 2026-12-05, had),
#   --labels target (the target's next-token distribution at each position, soft labels; tokens: the sampled
#   answers' tokens, as every head before 2026-12-06 14:30 UTC was trained), --lr 5e-4, --init-head '' (train: continue this head, e.g. a carried one, on new answers), --answer-seed ''
#   (train: the sampled answers' first seed, e.g. 1000 for other answers than an earlier session's),
#   --max-num-seqs 256, --deadline 560 (train: answering may take half of what is left after the
#   ~2 min join + convert, ~1.6M tokens), --batch-sizes 1,4,16,64, --gen-len 128, --eagle-ks 0-6 (the head's
#   static lines; 0-4 saves ~20 s a workload: k = 5, 6 were never the best, 2026-12-06), --draft-ks 0,2,3,
#   --ngram-ks 0,2,4, --drafters eagle,draft-model,ngram (the bench runs of a workload part; `eagle` alone
#   re-measures the head's lines in ~80 s a workload), --device auto, --dtype auto, --rounds 1 (> 1: every point measured that
#   many times in rotated order, the median kept: on 2026-12-06 19:20 UTC bursts of 4-15 ms steps on a shared host
#   moved single points by up to 25%; each round re-runs every line), --deterministic off (on: every
#   bench line with --deterministic, so every line decodes the same tokens: in bf16 the lines' answers diverge,
#   and on chat at batch 1 a diverged answer moved position-0 acceptance from 0.55 to 0.34-0.40, 2026-12-06). A CPU smoke run of the whole script (SmolLM2 as target and
#   draft, no join): `... /tmp/o train code-edit --target smollm2-135m-instruct --draft smollm2-135m-instruct
#   --device cpu --num-prompts 8 --max-tokens 16 --steps 4 --batch-sizes 1 --gen-len 4 --max-num-seqs 4`.
# Results: OUT_DIR/eagle-summary.md (train log tail, the comparison tables, timings) and
# OUT_DIR/eagle-results.tar.gz (logs, bench.json / bench.md of every run), rewritten after every part.
set -uo pipefail
out=${1:?usage: gpu_eagle_qwen.sh OUT_DIR [train] [code-edit] [chat] [OPTION VALUE ...]}
shift
target=/tmp/qwen-1.5b.gguf draft=/tmp/qwen-0.5b.gguf head_dir=/tmp/eagle-qwen15b num_prompts=2970 max_tokens=1024
answers_per_prompt=3 temperature=0.8 draft_vocab_size=32000
steps=12000 batch_size=8 ttt_steps=5 lr=5e-4 max_num_seqs=256 deadline=560 batch_sizes=1,4,16,64 gen_len=128
eagle_ks=0-6 draft_ks=0,2,3 ngram_ks=0,2,4 drafters=eagle,draft-model,ngram device=auto dtype=auto examples=/tmp/eagle-examples.safetensors init_head= answer_seed=
deterministic=off labels=target rounds=1
parts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target|--draft|--head-dir|--num-prompts|--answers-per-prompt|--temperature|--max-tokens|--steps|--batch-size|--ttt-steps|--lr|--max-num-seqs|--draft-vocab-size|--init-head|--answer-seed|--labels|\
    --deadline|--batch-sizes|--gen-len|--eagle-ks|--draft-ks|--ngram-ks|--drafters|--device|--dtype|--deterministic|--rounds)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      var=${1#--}; printf -v "${var//-/_}" %s "$2"; shift 2 ;;
    train|carried-head|train-more|export-head|code-edit|chat) parts+=("$1"); shift ;;
    *) echo "error: unknown argument '$1' (parts: train, carried-head, train-more, export-head, code-edit, chat; options: see the header)" >&2
       exit 2 ;;
  esac
done
[ ${#parts[@]} -gt 0 ] || parts=(train code-edit chat)
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
work=/tmp/eagle-out  # kept across calls on a warm machine: each call's summary carries the earlier parts
mkdir -p "$work" "$out"
summary=$work/eagle-summary.md
[ -f "$summary" ] || echo "# EAGLE-3 head for $target ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))" > "$summary"
start=$SECONDS
stamp() { echo "[$(date -u +%H:%M:%S), +$((SECONDS - start)) s] $*" | tee -a "$work/timing.txt"; }
finish() {
  { cat "$summary"; echo; echo "## timings"; echo '```'; cat "$work/timing.txt"; echo '```'; } > "$out/eagle-summary.md"
  tar -czf "$out/eagle-results.tar.gz" -C "$work" .
}
convert() {  # GGUF -> float32 safetensors cache, once (dynaspec.models.loader.prepare_gguf); a zoo name passes
  case "$1" in
    *.gguf) python3 -c "import sys; from dynaspec.models.loader import prepare_gguf; print(prepare_gguf(sys.argv[1]))" \
              "$1" > "$work/convert-$(basename "$1" .gguf).log" 2>&1 ;;
  esac
}

export_head() {  # the head's next 4 export parts into $out (the first call writes the parts: head_xfer.sh export)
  local parts_dir=/tmp/eagle-head-parts todo left
  [ -f "$parts_dir/sha256.txt" ] || bash "$root/scripts/head_xfer.sh" export "$head_dir" "$parts_dir" | tee -a "$work/timing.txt"
  touch "$parts_dir/.sent"
  todo=$(cd "$parts_dir" && ls p_* config.json sha256.txt | grep -vxFf .sent | head -4)
  for f in $todo; do cp "$parts_dir/$f" "$out/" && echo "$f" >> "$parts_dir/.sent"; done
  left=$(cd "$parts_dir" && ls p_* config.json sha256.txt | grep -cvxFf .sent)
  stamp "export-head: sent $(echo $todo | wc -w) files to $out ($left left$([ "$left" = 0 ] && echo ': all sent'))"
}

prepare_pair() {  # the carried chunks joined into the two GGUFs, both converted (in parallel); without
  # draft-model in --drafters only the 1.5B (its chunks, 08..27, suffice: qwen_join.sh --target-only)
  local join=() need_draft=0
  [[ ",$drafters," == *,draft-model,* ]] && need_draft=1
  [ "$need_draft" = 1 ] || join=(--target-only)
  if [[ "$target" == *.gguf ]]; then
    stamp "join ${join[*]}: $root/.xfer -> $(dirname "$target")"
    bash "$root/scripts/qwen_join.sh" "${join[@]}" "$root/.xfer" "$(dirname "$target")" 2>&1 | tee -a "$work/timing.txt"
  fi
  convert "$target" & target_pid=$!
  draft_pid=
  if [ "$need_draft" = 1 ]; then convert "$draft" & draft_pid=$!; fi
  wait "$target_pid" && { [ -z "$draft_pid" ] || wait "$draft_pid"; }
  stamp "converted (exit $?)"
}

for part in "${parts[@]}"; do
  if [ "$part" = carried-head ]; then
    prepare_pair
    bash "$root/scripts/head_xfer.sh" unpack "$root/.xfer-head" "$head_dir" 2>&1 | tee -a "$work/timing.txt"
    { echo; echo "## head carried from an earlier session"; echo '```'; cat "$head_dir/config.json"; echo '```'; } >> "$summary"
  elif [ "$part" = train ]; then
    prepare_pair
    limit=$((deadline - (SECONDS - start) - 20))  # 20 s: loading, the held-out estimate and saving
    continued=()
    [ -n "$init_head" ] && continued+=(--init-head "$init_head")
    [ -n "$answer_seed" ] && continued+=(--answer-seed "$answer_seed")
    stamp "train-head (--time-limit $limit ${continued[*]})"
    # expandable segments: every batch has other sequence lengths, and a caching allocator that keeps
    # splitting and freeing tens of GB of blocks synchronises the device (a guess at the first run's ~1 s steps)
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 -m dynaspec.cli train-head --model "$target" --out "$head_dir" \
      --workload stdlib,pydoc,questions --num-prompts "$num_prompts" --max-tokens "$max_tokens" \
      --answers-per-prompt "$answers_per_prompt" --temperature "$temperature" \
      --steps "$steps" --batch-size "$batch_size" --ttt-steps "$ttt_steps" --lr "$lr" --time-limit "$limit" \
      --max-num-seqs "$max_num_seqs" --draft-vocab-size "$draft_vocab_size" --device "$device" --dtype "$dtype" \
      --labels "$labels" --save-examples "$examples" "${continued[@]}" > "$work/train.log" 2>&1
    status=$?
    stamp "train-head exit $status"
    { echo; echo "## train-head (exit $status)"; echo '```'; grep -v "━" "$work/train.log" | tail -25; echo '```'; } >> "$summary"
    # the head's first export parts come back with this call (a machine lost later keeps nothing: the
    # 2026-12-06 17:27 and 19:08 heads were); `export-head` calls bring the rest
    [ "$status" = 0 ] && export_head
  elif [ "$part" = export-head ]; then
    export_head
  elif [ "$part" = train-more ]; then
    limit=$((deadline - (SECONDS - start) - 20))
    stamp "train-head continued (--time-limit $limit)"
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 -m dynaspec.cli train-head --model "$target" --out "$head_dir" \
      --load-examples "$examples" --init-head "$head_dir" --steps "$steps" --batch-size "$batch_size" \
      --ttt-steps "$ttt_steps" --lr "$lr" --time-limit "$limit" --device "$device" --dtype "$dtype" --labels "$labels" \
      > "$work/train-more.log" 2>&1
    status=$?
    stamp "train-head continued, exit $status"
    { echo; echo "## train-head continued (exit $status)"; echo '```'; grep -v "━" "$work/train-more.log" | tail -12; echo '```'; } >> "$summary"
  else
    workload=$part
    spec=$work/eagle.yaml
    printf 'speculative_config:\n  decoding_type: Eagle\n  max_draft_len: 6\n  speculative_model: %s\n  draft_len_policy: goodput\n' \
      "$head_dir" > "$spec"
    common=(--model "$target" --workload "$workload" --batch-sizes "$batch_sizes" --gen-len "$gen_len"
            --device "$device" --dtype "$dtype" --rounds "$rounds" --no-plots)
    case "$deterministic" in
      on) common+=(--deterministic) ;;
      off) ;;
      *) echo "error: --deterministic takes on or off, got '$deterministic'" >&2; exit 2 ;;
    esac
    runs=()
    for drafter in ${drafters//,/ }; do
      case "$drafter" in
        eagle) args=(--spec-config "$spec" --ks "$eagle_ks" --policy-lines adaptive) ;;
        draft-model) args=(--drafter draft-model --draft-model "$draft" --max-draft-len 4 --ks "$draft_ks" --no-schedule-line) ;;
        ngram) args=(--drafter ngram --max-draft-len 4 --ks "$ngram_ks" --no-schedule-line) ;;
        *) echo "error: unknown drafter '$drafter' in --drafters (eagle, draft-model, ngram)" >&2; exit 2 ;;
      esac
      name=$workload-$drafter
      stamp "bench $name"
      python3 -m dynaspec.cli bench "${common[@]}" "${args[@]}" --out-dir "$work/$name" > "$work/$name.log" 2>&1
      status=$?
      stamp "bench $name exit $status"
      [ $status = 0 ] || tail -15 "$work/$name.log"
      runs+=("$drafter=$work/$name/bench.json")
      finish
    done
    { echo; echo "## $workload: EAGLE head vs the 0.5B draft model vs n-gram (batch sizes $batch_sizes, gen-len $gen_len, deterministic $deterministic)"; echo
      python3 "$root/scripts/drafter_compare.py" "$work/$workload-compare.md" "${runs[@]}" 2>&1; } >> "$summary"
  fi
  finish
done
cat "$out/eagle-summary.md"
