#!/usr/bin/env bash
# On the GPU machine: `dynaspec bench` on the real Qwen2.5-Coder pair (1.5B target, 0.5B draft; issue 5,
# "Real weights too"): real code-edit and chat prompts, the models' own acceptance, tokens/s by batch size
# for no spec, every static k and the schedule, and whether each line's greedy tokens equal no spec's.
#
# Usage: bash scripts/gpu_qwen_pair.sh OUT_DIR [OPTION VALUE ...] [PART ...]
#   PART: draft-model (0.5B drafts for the 1.5B) and/or ngram (prompt lookup on the 1.5B); default both.
#   Options (defaults): --dtype auto (bf16 on CUDA), --schedule 1:4,16:2,64:1, --ks 0-4,
#   --batch-sizes 1,4,16,64, --gen-len 64, --device auto, --gguf-dir /tmp, --workloads code-edit,chat,
#   --bench-flags '' (more flags for
#   every bench run, word-split: e.g. '--deterministic --policy-lines goodput', issue 22's 40-point check,
#   the gpu_session.sh step `qwen-det`). Small values give a CPU smoke
#   run of the whole script, e.g. `... /tmp/o --device cpu --batch-sizes 1 --gen-len 3 --ks 0,1 ngram`.
#   Normally run as a step of scripts/gpu_session.sh (`qwen`, `qwen-draft`, `qwen-ngram`), which first
#   installs the `gguf` and `accelerate` wheels the GPU image lacks (carried in .gpu-wheels).
#
# Getting the weights there (1.6 GB, 28 chunks of 56 MiB; see ../shared/gpu/README.md): here, run
# `bash scripts/prepare_qwen_xfer.sh` once, then make the device calls one right after the other on the
# same warm machine (ignored files carried earlier stay there while it is warm):
#   calls 1-27: carry [".xfer/00"], then [".xfer/01"], ... [".xfer/26"]; command `ls .xfer`
#   call 28:    carry [".xfer/27", ".gpu-wheels", ".whl"]; command
#               `bash scripts/gpu_session.sh qwen-draft` (timeout_s 600)
#   call 29:    carry [".gpu-wheels", ".whl"]; command `bash scripts/gpu_session.sh qwen-ngram` (timeout_s 600)
#   (or one call 28 running `bash scripts/gpu_session.sh qwen`: both parts, ~7 min, closer to the limit).
# .gpu-wheels (7 MiB) cannot ride with a 56 MiB chunk (64 MiB per call), only with the short last one;
# .whl is needed too, since gpu_session.sh's single pip command also installs pytest from it.
# scripts/qwen_join.sh then joins the chunks into /tmp/qwen-0.5b.gguf and /tmp/qwen-1.5b.gguf and checks
# their sha256 against scripts/qwen_xfer_manifest.txt (it names any chunk that did not arrive). Each GGUF
# is converted once (dequantized, float32 safetensors under ~/.cache/dynaspec/gguf; both in parallel);
# the engines load it in the bench dtype (bf16 on CUDA unless --dtype says otherwise).
#
# Results: OUT_DIR/qwen-summary.md (the four bench.md reports, with timings) and OUT_DIR/qwen-results.tar.gz
# (bench.json with per-request output tokens, bench.md, PNG plots and logs of each run); three files with
# gpu_session.sh's card.txt, inside the device's eight-file limit; rewritten after every run.
#
# Expected time on an H100 / H200 (estimated from the H200 runs of random:llama-3.1-8b, not yet measured):
# join + sha256 ~15 s, conversion ~60 s (CPU measured: 69 s for the 1.5B on one core here), each
# draft-model run ~100 s and each n-gram run ~70 s (6 engines of 4 batch sizes, CUDA graphs captured per
# engine): ~6-7.5 min in all, or ~4.5 min (draft-model) + ~2.5 min (ngram) as two calls.
set -uo pipefail
out=${1:?usage: gpu_qwen_pair.sh OUT_DIR [OPTION VALUE ...] [draft-model] [ngram]}
shift
dtype=auto schedule=1:4,16:2,64:1 ks=0-4 batch_sizes=1,4,16,64 gen_len=64 device=auto gguf_dir=/tmp bench_flags=
workloads=code-edit,chat
parts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dtype|--schedule|--ks|--batch-sizes|--gen-len|--device|--gguf-dir|--bench-flags|--workloads)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      var=${1#--}; printf -v "${var//-/_}" %s "$2"; shift 2 ;;
    draft-model|ngram) parts+=("$1"); shift ;;
    *) echo "error: unknown argument '$1' (parts: draft-model, ngram; options: see the header)" >&2; exit 2 ;;
  esac
done
[ ${#parts[@]} -gt 0 ] || parts=(draft-model ngram)
root=$(cd "$(dirname "$0")/.." && pwd)
target=$gguf_dir/qwen-1.5b.gguf
draft=$gguf_dir/qwen-0.5b.gguf
work=$(mktemp -d /tmp/qwen-out.XXXX)
summary=$work/qwen-summary.md
mkdir -p "$out"
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*" | tee -a "$work/timing.txt"; }

finish() {
  { echo "# Qwen2.5-Coder pair on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
    echo; echo '```'; cat "$work/timing.txt"; echo '```'; echo
    for md in "$work"/qwen-*/bench.md; do [ -f "$md" ] && { cat "$md"; echo; }; done; } > "$summary"
  cp "$summary" "$out/qwen-summary.md"
  tar czf "$out/qwen-results.tar.gz" -C "$work" --exclude=qwen-summary.md .
  stamp "wrote $out/qwen-summary.md and $out/qwen-results.tar.gz"
}

stamp "join: $root/.xfer -> $gguf_dir"
if ! bash "$root/scripts/qwen_join.sh" "$root/.xfer" "$gguf_dir" 2>&1 | tee -a "$work/timing.txt"; then
  stamp "FAILED: join (see above)"; finish; exit 1
fi
[ -f "$target" ] || { stamp "FAILED: no $target"; finish; exit 1; }

convert() {  # GGUF -> float32 safetensors cache, once (dynaspec.models.loader.prepare_gguf)
  python3 -c "import sys; from dynaspec.models.loader import prepare_gguf; print(prepare_gguf(sys.argv[1]))" "$1" \
    > "$work/convert-$(basename "$1" .gguf).log" 2>&1
}
convert "$target" & target_pid=$!
draft_pid=
if [[ " ${parts[*]} " == *" draft-model "* ]]; then convert "$draft" & draft_pid=$!; fi
stamp "convert (once; in parallel): $target${draft_pid:+ and $draft}"
wait "$target_pid" || { stamp "FAILED: converting $target"; tail -5 "$work"/convert-*.log; finish; exit 1; }
if [ -n "$draft_pid" ]; then
  wait "$draft_pid" || { stamp "FAILED: converting $draft"; tail -5 "$work"/convert-*.log; finish; exit 1; }
fi
stamp "converted"

status=0
for part in "${parts[@]}"; do
  for workload in ${workloads//,/ }; do
    name=qwen-$part-$workload
    drafter=(--drafter ngram)
    [ "$part" = draft-model ] && drafter=(--drafter draft-model --draft-model "$draft")
    cmd=(python3 -m dynaspec.cli bench --model "$target" "${drafter[@]}" --max-draft-len 4 --ks "$ks"
         --draft-len-schedule "$schedule" --batch-sizes "$batch_sizes" --workload "$workload" --gen-len "$gen_len"
         --dtype "$dtype" --device "$device" --out-dir "$work/$name")
    read -ra extra <<< "$bench_flags"
    cmd+=("${extra[@]}")
    stamp "$name: ${cmd[*]}"
    if "${cmd[@]}" > "$work/$name.log" 2>&1; then
      stamp "$name done"
      awk '/^- prompts:/ {print} /^### / {table = /^### Decode tokens/} table && /^\|/ {print}' "$work/$name/bench.md"
    else
      status=1
      stamp "FAILED: $name (exit code above; last lines:)"
      tail -15 "$work/$name.log"
    fi
    finish  # after every run, so a call stopped at its time limit still brings back what was done
  done
done
exit $status
