#!/usr/bin/env bash
# One device call: install the missing wheels, run the CUDA tests, then the benchmarks named in $@.
# Usage (on the lent GPU, carrying .gpu-wheels): bash scripts/gpu_session.sh tests bench-core ...
set -uo pipefail
OUT=${OUT:-/tmp/out}
AB=/tmp/ab; mkdir -p "$OUT" "$AB"
if ! python3 -c "import pydantic" 2>/dev/null && [ ! -d .gpu-wheels ] && [ ! -d .whl ]; then
  echo "gpu_session: pydantic is missing and no .gpu-wheels here: pass carry=[\".gpu-wheels\"] to the device call" >&2
  exit 2
fi
python3 -m pip install -q --no-index --find-links .gpu-wheels --find-links .whl pydantic fastapi uvicorn gguf accelerate pytest 2>&1 | tail -1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
date -u | tee -a "$OUT/card.txt"
# goodput_sweep NAME SPEC_YAML PROFILE BATCHES ROUNDS: the goodput planner against no spec and k = 1..4
# (n-gram drafter, replayed acceptance), writing $OUT/NAME/ and $OUT/NAME.log.
goodput_sweep() {
  python3 -m dynaspec.cli bench --model random:llama-3.1-8b --spec-config "$2" \
    --ks 0-4 --batch-sizes "$4" --prompt-len 128 --gen-len 64 --rounds "$5" \
    --acceptance-profile "$3" --no-plots --out-dir "$OUT/$1" > "$OUT/$1.log" 2>&1
  tail -5 "$OUT/$1.log"
}
for step in "$@"; do
  echo "=== $step"
  case "$step" in
    tests)
      # every module with CUDA-marked tests (grep -l "mark.cuda" tests/*.py)
      python3 -m pytest -q -m cuda tests/test_attention.py tests/test_chain_graphs.py tests/test_cuda_graphs.py \
        tests/test_fused_ops.py tests/test_gemv.py tests/test_loader.py tests/test_model_parity.py \
        tests/test_triton_attention.py tests/test_triton_prefill_attention.py tests/test_mixed_graphs.py \
        tests/test_gemma3.py tests/test_ragged_graphs.py tests/test_deferred_verify.py tests/test_eager_kernel_warmup.py tests/test_chained_step.py $(ls tests/test_deterministic*.py \
        tests/test_eagle*.py 2>/dev/null) 2>&1 | tee "$OUT/cuda_tests.log" | tail -15 ;;
    bench-core)
      python3 -m dynaspec.cli bench --model random:llama-3.1-8b --ks 0 --batch-sizes 1,64 \
        --prompt-len 128 --gen-len 64 --compare-hf --hf-batch-sizes 1,64 --no-plots --out-dir "$OUT/core" 2>&1 | tail -12 ;;
    bench-k0)
      python3 -m dynaspec.cli bench --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
        --draft-len-schedule '1:4,2:0' --ks 0 --batch-sizes 2,8,64 --prompt-len 128 --gen-len 64 \
        --no-plots --out-dir "$OUT/k0" 2>&1 | tail -12 ;;
    bench-ngram)
      python3 -m dynaspec.cli bench --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
        --draft-len-schedule '1:4,16:2,64:0' --ks 0-4 --batch-sizes 1,4,16,64,128 --prompt-len 128 --gen-len 64 \
        --acceptance-profile acceptance_ngram_code-edit --out-dir "$OUT/ngram" 2>&1 | tail -30 ;;
    bench-ngram-b1)  # issue 5: the batch-1 n-gram speedup over no spec (copy-heavy replayed acceptance)
      python3 -m dynaspec.cli bench --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
        --draft-len-schedule '1:4' --ks 0-4 --batch-sizes 1 --prompt-len 128 --gen-len 64 --rounds 3 \
        --acceptance-profile acceptance_ngram_code-edit --no-plots --out-dir "$OUT/ngram-b1" > "$OUT/ngram-b1.log" 2>&1
      grep -A12 "Every point" "$OUT/ngram-b1/bench.md" ;;
    bench-draft)
      python3 -m dynaspec.cli bench --model random:llama-3.1-8b --drafter draft-model --draft-model random:llama-3.2-1b \
        --max-draft-len 4 --draft-len-schedule '1:4,16:2,64:0' --ks 0-4 --batch-sizes 1,4,16,64 --prompt-len 128 \
        --gen-len 64 --acceptance-profile acceptance_draft-model_code-edit --no-plots --out-dir "$OUT/draft" \
        > "$OUT/draft.log" 2>&1; tail -5 "$OUT/draft.log" ;;
    bench-goodput)
      goodput_sweep goodput bench/goodput_ngram_code_edit.yaml acceptance_ngram_code-edit 1,4,16,64,128,256 3 ;;
    tp-goodput)  # issue 25 (a kind with 2 GPUs; ~8 min): the goodput sweep sharded over 2 ranks (one engine a line)
      python3 -m dynaspec.cli bench --model random:llama-3.1-8b --spec-config bench/goodput_ngram_code_edit.yaml \
        --ks 0-4 --batch-sizes 1,4,16,64,128,256 --prompt-len 128 --gen-len 64 --tensor-parallel-size 2 \
        --acceptance-profile acceptance_ngram_code-edit --no-plots --out-dir "$OUT/tp-goodput" > "$OUT/tp-goodput.log" 2>&1
      tail -5 "$OUT/tp-goodput.log" ;;
    qwen)  # real Qwen2.5-Coder 0.5B -> 1.5B pair; needs the 28 .xfer chunks carried first (see the script)
      bash scripts/gpu_qwen_pair.sh "$OUT" ;;
    eagle-qwen-train|eagle-qwen-train-more|eagle-qwen-code-edit|eagle-qwen-chat)  # issue 21, one part a call (see the script's header)
      bash scripts/gpu_eagle_qwen.sh "$OUT" "${step#eagle-qwen-}" ;;
    qwen-draft)
      bash scripts/gpu_qwen_pair.sh "$OUT" draft-model ;;
    qwen-ngram)
      bash scripts/gpu_qwen_pair.sh "$OUT" ngram ;;
    qwen-det)  # issue 22: the pair and n-gram in bf16 with --deterministic, every line vs no spec's tokens
      bash scripts/gpu_qwen_pair.sh "$OUT" --bench-flags "--deterministic --policy-lines goodput --no-plots" ;;
    qwen-det-chat)  # the same, chat prompts only (code-edit's half ran on 2026-12-05: 24 of 24)
      bash scripts/gpu_qwen_pair.sh "$OUT" --workloads chat --bench-flags "--deterministic --policy-lines goodput --no-plots" ;;
    qwen-adaptive|qwen-adaptive-draft|qwen-adaptive-ngram)  # issue 20 (after the .xfer chunks; join + convert
      # ~70 s, the draft-model half ~4 min, n-gram ~2 min): the real pair and n-gram on the 1.5B, code-edit and
      # chat prompts alternating per request, float32: adaptive vs uniform goodput vs no spec
      bash scripts/qwen_join.sh .xfer /tmp > /dev/null || exit 1
      case "$step" in qwen-adaptive-draft) drafters=(draft-model) ;; qwen-adaptive-ngram) drafters=(ngram) ;;
        *) drafters=(draft-model ngram) ;; esac
      for drafter in "${drafters[@]}"; do
        extra=(); [ "$drafter" = draft-model ] && extra=(--draft-model /tmp/qwen-0.5b.gguf)
        python3 -m dynaspec.cli bench --model /tmp/qwen-1.5b.gguf --drafter "$drafter" "${extra[@]}" --max-draft-len 4 \
          --ks 0,2 --no-schedule-line --policy-lines goodput,adaptive --batch-sizes 1,4,16,64 --workload code-edit,chat \
          --gen-len 64 --dtype float32 --no-plots --out-dir "$OUT/qwen-adaptive-$drafter" > "$OUT/qwen-adaptive-$drafter.log" 2>&1
        tail -3 "$OUT/qwen-adaptive-$drafter.log"; grep -A14 "Every point" "$OUT/qwen-adaptive-$drafter/bench.md" | head -24
      done ;;
    adaptive-bound)  # issue 20: what per-request k can gain over uniform k / no spec, from the probed costs
      python3 scripts/adaptive_bound.py --model random:llama-3.1-8b --out "$OUT/bound" 2>&1 | tail -14 ;;
    adaptive-sweep)  # issue 20: adaptive vs uniform goodput vs static k vs no spec, code-edit + chat mixed 50/50
      python3 -m dynaspec.cli bench --model random:llama-3.1-8b --spec-config bench/adaptive_ngram_mixed.yaml \
        --policy-lines goodput --ks 0-4 --batch-sizes 1,4,16,64,128,256 --prompt-len 128 --gen-len 64 --rounds 2 \
        --acceptance-profile acceptance_ngram_code-edit,acceptance_ngram_chat --no-plots --out-dir "$OUT/adaptive" \
        > "$OUT/adaptive.log" 2>&1; tail -3 "$OUT/adaptive.log"; grep -A50 "Every point" "$OUT/adaptive/bench.md" | head -50 ;;
    adaptive-sweep-pure)  # issue 20 (~5 min): the sweep on the pure code-edit and the pure chat profile, one round each
      for w in code-edit chat; do
        timeout 280 python3 -m dynaspec.cli bench --model random:llama-3.1-8b --spec-config bench/adaptive_ngram_mixed.yaml \
          --policy-lines goodput --ks 0,1,4 --batch-sizes 1,4,16,64,128,256 --prompt-len 128 --gen-len 64 --rounds 1 \
          --acceptance-profile "acceptance_ngram_$w" --no-plots --out-dir "$OUT/adaptive-$w" > "$OUT/adaptive-$w.log" 2>&1
        tail -2 "$OUT/adaptive-$w.log"; grep -A14 "Every point" "$OUT/adaptive-$w/bench.md" | head -16
      done ;;
    adaptive-sweep-draft)  # issue 20 (~6 min): the same sweep with a draft model (random Llama-3.2-1B for the 8B), the
      # Qwen pair's high-acceptance code-edit and chat profiles replayed 50/50, one round
      # (DRAFT_SWEEP_BATCHES: a subset; DRAFT_SWEEP_ROUNDS: more rounds, each a closed batch per line and point:
      # one closed batch of 16 is one draw: replayed with the bench's keyed draws, one batch's adaptive / static
      # k = 2 spreads with a standard deviation of ~0.03 across seeds)
      timeout "${DRAFT_SWEEP_TIMEOUT:-480}" python3 -m dynaspec.cli bench --model random:llama-3.1-8b \
        --spec-config bench/adaptive_draft_model_mixed.yaml --policy-lines goodput --ks 0-4 \
        --batch-sizes "${DRAFT_SWEEP_BATCHES:-1,4,16,64,128,256}" --prompt-len 128 --gen-len 64 \
        --rounds "${DRAFT_SWEEP_ROUNDS:-1}" \
        --acceptance-profile acceptance_draft-model_code-edit,acceptance_draft-model_chat --no-plots \
        --out-dir "$OUT/adaptive-draft" > "$OUT/adaptive-draft.log" 2>&1; tail -3 "$OUT/adaptive-draft.log"
      grep -A50 "Every point" "$OUT/adaptive-draft/bench.md" | head -50 ;;
    adaptive-steady)  # issue 20: each concurrency held (closed loop: a finished request is replaced), so the
      # (2026-12-05 ran --waves 3: 3 requests at concurrency 1, 1-11 s phases; now at least 16 per phase)
      # code-edit requests' early finishes are refilled as in serving; per-phase tokens/s in trace.md
      timeout 560 python3 -m dynaspec.cli bench-trace --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
        --profiles acceptance_ngram_code-edit,acceptance_ngram_chat --schedule auto --ks 0,1,4 --adaptive \
        --phases 1,4,16,64,128,256 --requests-per-phase 16,32,96,256,384,768 --prompt-len 128 --gen-len 64 \
        --out-dir "$OUT/adaptive-steady" > "$OUT/adaptive-steady.log" 2>&1; tail -3 "$OUT/adaptive-steady.log"
      cat "$OUT/adaptive-steady/trace.md" ;;
    adaptive-steady-hi)  # issue 20 (~5 min): adaptive-steady's two busiest phases only (mixed prefill + decode steps)
      timeout 330 python3 -m dynaspec.cli bench-trace --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
        --profiles acceptance_ngram_code-edit,acceptance_ngram_chat --schedule auto --ks 0,1,4 --adaptive \
        --phases 64,128 --requests-per-phase 192,384 --prompt-len 128 --gen-len 64 \
        --out-dir "$OUT/adaptive-steady-hi" > "$OUT/adaptive-steady-hi.log" 2>&1; tail -3 "$OUT/adaptive-steady-hi.log"
      cat "$OUT/adaptive-steady-hi/trace.md" ;;
    host-profile)  # issue 20 (~2 min): host time a decode step by function, static k = 4 vs adaptive, pure code-edit, batch 64
      python3 scripts/lab/host_profile.py "$OUT/host-profile" -- --model random:llama-3.1-8b \
        --spec-config bench/adaptive_ngram_mixed.yaml --ks 4 --batch-sizes 64 --prompt-len 128 --gen-len 64 --rounds 2 \
        --acceptance-profile acceptance_ngram_code-edit > "$OUT/host-profile.log" 2>&1; tail -60 "$OUT/host-profile.log" ;;
    drain-profile)  # issue 20 (~4 min): host time by function, draft-model mixed replay at batch 128, static k = 1 vs
      # adaptive (H100 2026-12-07 21:31: adaptive's drain steps around a finished request took 21-41 ms a pair against
      # ~23 for two steady k = 1 steps; docs/lab/adaptive_runs.md)
      python3 scripts/lab/host_profile.py "$OUT/drain-profile" -- --model random:llama-3.1-8b \
        --spec-config bench/adaptive_draft_model_mixed.yaml --ks 1 --batch-sizes 128 --prompt-len 128 --gen-len 64 \
        --rounds 1 --acceptance-profile acceptance_draft-model_code-edit,acceptance_draft-model_chat \
        > "$OUT/drain-profile.log" 2>&1; tail -60 "$OUT/drain-profile.log" ;;
    slow-step-profile)  # issue 20 (~2.5 min): what the host does in adaptive's step() calls over 15 ms (the
      # draft-model drain's finishes at batch 128) against its others, cProfile per call (H100 2026-12-08 00:45 UTC)
      timeout 150 python3 scripts/lab/slow_step_profile.py "$OUT/ssp" --slow-ms 15 --top 45 -- \
        --model random:llama-3.1-8b --spec-config bench/adaptive_draft_model_mixed.yaml --ks 0 --batch-sizes 128 \
        --prompt-len 128 --gen-len 64 --rounds 1 --no-warmup \
        --acceptance-profile acceptance_draft-model_code-edit,acceptance_draft-model_chat > "$OUT/ssp.log" 2>&1
      grep -A47 "^engine 1" "$OUT/ssp.log" | cut -c1-140 ;;
    adaptive-diurnal)  # issue 20: the diurnal mixed trace with the adaptive line
      timeout 560 python3 -m dynaspec.cli bench-trace --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
        --profiles acceptance_ngram_code-edit,acceptance_ngram_chat --schedule auto --ks 0,1,2,4 --adaptive \
        --phases 1,2,4,128,256,128,4,2,1 --requests-per-phase 9,16,25,256,256,256,25,16,9 --prompt-len 128 \
        --gen-len 128 --out-dir "$OUT/adaptive-diurnal" > "$OUT/adaptive-diurnal.log" 2>&1; tail -3 "$OUT/adaptive-diurnal.log"
      cat "$OUT/adaptive-diurnal/trace.md" ;;
    bench-goodput-chat)
      goodput_sweep goodput-chat bench/goodput_ngram_chat.yaml acceptance_ngram_chat 1,4,16,64,128,256 3 ;;
    bench-goodput-near-ties)
      # The two points of the 2026-11-27 sweeps that missed 0.98 x best static (chat batch 1, code-edit
      # batch 64), each line over 7 rounds instead of 3, to tell a planner miss from the run's noise.
      goodput_sweep near-ties-chat bench/goodput_ngram_chat.yaml acceptance_ngram_chat 1 7
      goodput_sweep near-ties-code bench/goodput_ngram_code_edit.yaml acceptance_ngram_code-edit 64 7 ;;
    bench-trace)
      # Mixed-load trace (issue 6): concurrency 1..128 rising and falling, code-edit + chat requests mixed;
      # lines no spec, k=1..4, the 'auto' schedule and goodput (7 engines).
      timeout 330 python3 -m dynaspec.cli bench-trace --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
        --profiles acceptance_ngram_code-edit,acceptance_ngram_chat --schedule auto \
        --phases 1,4,16,64,128,32,4,1 --waves 2 --prompt-len 128 --gen-len 32 \
        --out-dir "$OUT/trace" > "$OUT/trace.log" 2>&1; tail -3 "$OUT/trace.log"; cat "$OUT/trace/trace.md" ;;
    bench-trace-swing)
      # Load that swings between idle and peak (issue 6): concurrency 1 -> 2 -> 4 -> 128 -> 256 -> 128 -> 4 ->
      # 2 -> 1, 128 tokens per request, code-edit + chat requests mixed; on an H200 about 28% of the no-spec
      # time is at concurrency <= 4 (where long drafts pay), the rest at >= 128 (where any draft costs).
      timeout 480 python3 -m dynaspec.cli bench-trace --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
        --profiles acceptance_ngram_code-edit,acceptance_ngram_chat --schedule auto --ks 0,1,2,4 \
        --phases 1,2,4,128,256,128,4,2,1 --waves 2 --prompt-len 128 --gen-len 128 \
        --out-dir "$OUT/trace-swing" > "$OUT/trace-swing.log" 2>&1; tail -3 "$OUT/trace-swing.log"
      cat "$OUT/trace-swing/trace.md" ;;
    bench-trace-ramp)
      # Load that ramps through every batch size and back (issue 6): concurrency 1, 2, 4, ... 256, ... 2, 1,
      # one request per unit of concurrency and phase, code-edit + chat mixed, 128 tokens per request. Unlike
      # the swing above, the mid range (8-64), where the best k is 2-4 and changes with the load, is in it.
      timeout 400 python3 -m dynaspec.cli bench-trace --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
        --profiles acceptance_ngram_code-edit,acceptance_ngram_chat --schedule auto --ks 0,1,2,4 \
        --phases 1,2,4,8,16,32,64,128,256,128,64,32,16,8,4,2,1 --waves 1 --prompt-len 128 --gen-len 128 \
        --out-dir "$OUT/trace-ramp" > "$OUT/trace-ramp.log" 2>&1; tail -3 "$OUT/trace-ramp.log"
      cat "$OUT/trace-ramp/trace.md" ;;
    bench-trace-diurnal)
      # The swing's phases held for about equal time each (issue 6): request counts from the no-spec
      # tokens/s of each phase in the 2026-11-27 09:49 swing run on an H200 (209 / 366 / 575 tok/s at
      # concurrency 1 / 2 / 4, ~5,900 at 128 and 256), ~5-6 s of no-spec time per phase at 128 tokens a
      # request, so low load (where long drafts pay) is half the trace's time as in a day of serving.
      timeout 560 python3 -m dynaspec.cli bench-trace --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
        --profiles acceptance_ngram_code-edit,acceptance_ngram_chat --schedule auto --ks 0,1,2,4 \
        --phases 1,2,4,128,256,128,4,2,1 --requests-per-phase 9,16,25,256,256,256,25,16,9 --prompt-len 128 \
        --gen-len 128 --out-dir "$OUT/trace-diurnal" > "$OUT/trace-diurnal.log" 2>&1; tail -3 "$OUT/trace-diurnal.log"
      cat "$OUT/trace-diurnal/trace.md" ;;
    redesign-core|redesign-sweep|redesign-b1)
      # Issue 19: the commit before the redesign (b567a7c, `git archive b567a7c dynaspec bench | tar -x -C
      # .gl/old`, carried; $OLD names another place) and this tree, side by side in one call: decode at batch 1 and 64 (two rounds,
      # old/new interleaved), or the goodput sweep (code-edit replay) at batch 1, 16, 64, 256.
      for round in 1 2; do
        for tree in old new; do
          dir=$PWD; [ "$tree" = old ] && dir=${OLD:-$PWD/.gl/old}
          if [ "$step" = redesign-core ]; then
            args="--ks 0 --batch-sizes 1,64"; name=core-$tree-$round
          elif [ "$step" = redesign-b1 ]; then  # speculative batch 1, where per-step host work shows
            args="--spec-config $PWD/bench/goodput_ngram_code_edit.yaml --ks 0-4 --batch-sizes 1 --rounds 3 --acceptance-profile acceptance_ngram_code-edit"
            name=b1-$tree-$round
          else
            [ "$round" = 2 ] && continue
            args="--spec-config $PWD/bench/goodput_ngram_code_edit.yaml --ks 0-4 --batch-sizes 1,16,64,256 --rounds 2 --acceptance-profile acceptance_ngram_code-edit"
            name=sweep-$tree
          fi
          (cd "$dir" && PYTHONPATH=$dir python3 -m dynaspec.cli bench --model random:llama-3.1-8b $args \
            --prompt-len 128 --gen-len 64 --no-plots --out-dir "$AB/$name" > "$AB/$name.log" 2>&1) || tail -5 "$AB/$name.log"
        done
      done
      if [ "$step" = redesign-core ]; then set -- "$AB"/core-old-1 "$AB"/core-new-1 "$AB"/core-old-2 "$AB"/core-new-2
      elif [ "$step" = redesign-b1 ]; then set -- "$AB"/b1-old-1 "$AB"/b1-new-1 "$AB"/b1-old-2 "$AB"/b1-new-2
      else set -- "$AB"/sweep-old "$AB"/sweep-new; fi
      python3 scripts/redesign_ab.py "$@" | tee -a "$OUT/redesign_ab.md" ;;
    k0-ab)
      python3 scripts/gpu_k0_ab.py 2 8 64 2>&1 | tail -5 ;;
    eagle-check)  # issue 21, no weights needed (~4 min): the CUDA tests of what changed on 2026-12-05 without a GPU
      # (split count from the grid, the tap inside the fused add-RMSNorm, the draft vocabulary), then where a
      # train-head step goes (random Qwen-1.5B shapes, with and without a 32k draft vocabulary), then which steps
      # of an EAGLE bench stall and why (random head)
      timeout 200 python3 -m pytest -q -m cuda tests/test_triton_attention.py tests/test_attention.py tests/test_fused_ops.py \
        tests/test_eagle_spec.py tests/test_eagle_head.py 2>&1 | tail -4
      for vocab in "" "--draft-vocab-size 32000"; do
        timeout 90 python3 scripts/profile_train_step.py --steps 4 $vocab > "$OUT/profile_train${vocab:+_vocab}.txt" 2>&1
        head -1 "$OUT/profile_train${vocab:+_vocab}.txt"
      done
      printf 'speculative_config:\n  decoding_type: Eagle\n  max_draft_len: 4\n  speculative_model: /tmp/rhead\n  draft_len_policy: goodput\n' > /tmp/rhead.yaml
      timeout 150 python3 scripts/step_stalls.py --threshold-ms 15 --top 30 --random-head /tmp/rhead -- --model random:qwen2.5-1.5b \
        --spec-config /tmp/rhead.yaml --ks 0,2 --batch-sizes 1,16 --prompt-len 160 --gen-len 48 --no-plots --out-dir "$OUT/ss" \
        > "$OUT/stalls.log" 2>&1; grep "stall:" "$OUT/stalls.log" | head -20 ;;
    wave-check)  # one ~9 min call for the 2026-12-06 changes: the CUDA tests of the prefill kernel, the K-sliced GEMM and
      # the chain-to-verify hand-off, then det-tune's tuner (its table copied to $OUT) and a one-round price
      timeout 150 python3 -m pytest -q -m cuda tests/test_triton_prefill_attention.py tests/test_chain_graphs.py \
        tests/test_eagle_spec.py tests/test_deterministic_cuda.py -k "not goodput_policy_prices and (gemm or prefill or \
        mixed or chain or eager or random_model)" 2>&1 | tee "$OUT/wave_tests.log" | tail -5
      timeout 200 python3 scripts/tune_invariant_gemm.py --models random:llama-3.1-8b random:qwen2.5-1.5b \
        --report "$OUT/tiles.md" > "$OUT/tune.log" 2>&1; grep -E "^\| random|table written" "$OUT/tune.log" | tail -22
      cp dynaspec/models/gemm_tile_tables/*.json "$OUT/" 2>/dev/null
      timeout 170 python3 scripts/deterministic_price.py --model random:llama-3.1-8b --batches 1 16 64 --k 4 --rounds 1 \
        --out "$OUT/price" > "$OUT/price.log" 2>&1; tail -10 "$OUT/price.log" ;;
    mixed-ab)  # issue 20 (~5 min): the mixed-step graphs' CUDA test, then the closed loop at 64 (no spec and k = 1)
      # with cudagraph_mode FULL_DECODE_ONLY (mixed steps eager) and FULL (mixed steps captured), in one call
      timeout 60 python3 -m pytest -q -m cuda tests/test_mixed_graphs.py 2>&1 | tail -2
      for mode in FULL_DECODE_ONLY FULL; do
        timeout 110 python3 -m dynaspec.cli bench-trace --model random:llama-3.1-8b --drafter ngram --max-draft-len 4 \
          --profiles acceptance_ngram_code-edit,acceptance_ngram_chat --schedule none --no-goodput --ks 0,1 --phases 64 \
          --requests-per-phase 128 --prompt-len 128 --gen-len 64 --cudagraph-mode $mode --no-plots \
          --out-dir "$OUT/mixed-$mode" > "$OUT/mixed-$mode.log" 2>&1; echo "$mode"; grep -E "^\| (no spec|k=1) " "$OUT/mixed-$mode/trace.md"
      done ;;
    slots-check)  # issue 20 (~4 min on 2026-12-07 21:31 UTC; longer since a048bfa, whose mixed graphs reach
      # 2,048 prompt rows at every k = 0 bucket: give it the whole 600 s; carry .gl, .gl/old = `git archive 7500cbd
      # dynaspec bench scripts pyproject.toml`): the mixed graphs' CUDA tests, then the draft-model sweep's 16, 64,
      # 128 old tree then this one (the prefill phase through mixed graphs: compare batch_tokens_per_s and
      # prefill_step_log)
      timeout 90 python3 -m pytest -q -m cuda tests/test_mixed_graphs.py 2>&1 | tail -2
      DRAFT_AB_BATCHES=16,64,128 bash "$0" adaptive-draft-ab 2>&1 | grep -v "^===" | tail -6
      python3 scripts/lab/batch_rates.py "$OUT/da-old/bench.json" "$OUT/da-new/bench.json" ;;
    retune)  # issue 22 (~8 min; with the TMA candidates both models' tuning takes ~8 min alone: give one model a
      # call with TUNE_MODELS=random:llama-3.1-8b, then random:qwen2.5-1.5b): the tuner again (split-K threshold and, since 2026-12-06, larger tiles from the M
      # where they win and keep every row's bits, per shape), the GEMM CUDA tests with its table, then the price
      timeout 330 python3 scripts/tune_invariant_gemm.py --models ${TUNE_MODELS:-random:llama-3.1-8b random:qwen2.5-1.5b} \
        --report "$OUT/tiles.md" > "$OUT/tune.log" 2>&1; grep -E "^\| random|table written" "$OUT/tune.log" | tail -22
      cp dynaspec/models/gemm_tile_tables/*.json "$OUT/" 2>/dev/null
      timeout 100 python3 -m pytest -q -s -m cuda tests/test_deterministic_cuda.py tests/test_triton_attention.py \
        tests/test_triton_prefill_attention.py -k "gemm or attention or prefill or mixed" > "$OUT/gemm_tests.log" 2>&1
      grep -E "TMA tiles|passed|failed" "$OUT/gemm_tests.log" | tail -6
      timeout 120 python3 scripts/deterministic_price.py --model random:llama-3.1-8b --batches 1 16 64 --k 4 --rounds ${PRICE_ROUNDS:-2} \
        --out "$OUT/price" > "$OUT/price.log" 2>&1; tail -9 "$OUT/price.log" ;;
    eagle-profile)  # issue 21 (~2 min): an EAGLE step's kernels at batch 1 and 4, random Qwen2.5-1.5B + untrained head
      for b in 1 4; do timeout 200 python3 scripts/eagle_step_profile.py --ks 0 1 3 --batch $b 2>&1 | grep -v Warning \
        | tee "$OUT/eagle_profile_b$b.md" | grep -E "^## |GPU busy"; done ;;
    engine-tests)  # (~3 min) the engine-level CUDA tests of the chained / deferred steps, eager warm-up, EAGLE chains, fused ops
      timeout 200 python3 -m pytest -q -m cuda tests/test_eager_kernel_warmup.py tests/test_chained_step.py \
        tests/test_deferred_verify.py tests/test_eagle_spec.py tests/test_chain_graphs.py tests/test_greedy_pick.py tests/test_eagle_head.py \
        tests/test_fused_ops.py > "$OUT/engine_tests.log" 2>&1
      tail -4 "$OUT/engine_tests.log" ;;
    retune-lite)  # issue 22 (~8 min; 4 min tuning with the TMA candidates): retune's Llama-3.1-8B shapes only, the GEMM tests, the price in one round
      timeout 300 python3 scripts/tune_invariant_gemm.py --models random:llama-3.1-8b --report "$OUT/tiles.md" \
        > "$OUT/tune.log" 2>&1; grep -E "^\| random|table written" "$OUT/tune.log" | tail -12
      cp dynaspec/models/gemm_tile_tables/*.json "$OUT/" 2>/dev/null
      timeout 60 python3 -m pytest -q -s -m cuda tests/test_deterministic_cuda.py -k gemm > "$OUT/gemm_tests.log" 2>&1
      grep -E "TMA tiles|passed|failed" "$OUT/gemm_tests.log" | tail -6
      timeout 110 python3 scripts/deterministic_price.py --model random:llama-3.1-8b --batches 1 16 64 --k 4 --rounds 1 \
        --out "$OUT/price" > "$OUT/price.log" 2>&1; tail -9 "$OUT/price.log" ;;
    gemm-probe)  # issue 22 (~2 min): where the invariant GEMM loses to cuBLAS at verify widths (M = 320, 2048):
      # the tuned entries against the same tiles with K in one slice and other tiles (scripts/gemm_verify_rows_probe.py)
      timeout 420 python3 scripts/gemm_verify_rows_probe.py --m 320 2048 --shapes gate_up down o_proj lm_head 2>&1 \
        | tee "$OUT/gemm_probe.md" | tail -60 ;;
    handoff-ab)  # issue 21 (~4 min; carry .gl with .gl/old = `git archive` of the commit before the hand-off):
      # batch-1/4 tokens/s of an untrained EAGLE head at k = 3 (every step drafts 3 and verifies 4 positions) and
      # no spec, the old tree and this one in one call, old-new-old-new
      python3 -c "import sys; sys.path.insert(0, 'scripts'); from step_stalls import write_random_head as w; w('random:qwen2.5-1.5b', '/tmp/rhead')"
      printf 'speculative_config:\n  decoding_type: Eagle\n  max_draft_len: 3\n  speculative_model: /tmp/rhead\n' > /tmp/rhead3.yaml
      for round in ${HANDOFF_ROUNDS:-1 2}; do for tree in old new; do
        dir=$PWD; [ $tree = old ] && dir=$PWD/.gl/old
        (cd "$dir" && PYTHONPATH=$dir timeout 140 python3 -m dynaspec.cli bench --model random:qwen2.5-1.5b \
          --spec-config /tmp/rhead3.yaml --ks 0,3 --batch-sizes 1,4 --prompt-len 128 --gen-len 96 --no-plots \
          --out-dir "$OUT/ho-$tree-$round" > "$OUT/ho-$tree-$round.log" 2>&1); tail -2 "$OUT/ho-$tree-$round.log"
      done; python3 scripts/redesign_ab.py "$OUT/ho-old-$round" "$OUT/ho-new-$round"; done ;;
    adaptive-ab)  # issue 20 (~4 min; carry .gl, .gl/old = `git archive <old> dynaspec bench scripts pyproject.toml`):
      # the pure code-edit sweep's batches 4-64 (k = 4, goodput, adaptive), the old tree and this one, old-new-old-new
      for round in ${ADAPTIVE_AB_ROUNDS:-1 2}; do for tree in old new; do
        dir=$PWD; [ $tree = old ] && dir=$PWD/.gl/old
        (cd "$dir" && PYTHONPATH=$dir timeout 140 python3 -m dynaspec.cli bench --model random:llama-3.1-8b \
          --spec-config bench/adaptive_ngram_mixed.yaml --policy-lines goodput --ks 0,4 --batch-sizes 4,16,64 \
          --prompt-len 128 --gen-len 64 --rounds 1 --acceptance-profile acceptance_ngram_code-edit --no-plots \
          --out-dir "$OUT/aa-$tree-$round" > "$OUT/aa-$tree-$round.log" 2>&1); tail -1 "$OUT/aa-$tree-$round.log"
      done; python3 scripts/redesign_ab.py "$OUT/aa-old-$round" "$OUT/aa-new-$round"; done ;;
    adaptive-draft-ab)  # issue 20 (~5 min; carry .gl, .gl/old = `git archive <old> dynaspec bench scripts pyproject.toml`):
      # the draft-model mixed sweep's batches 1-128 (DRAFT_AB_BATCHES; no spec, k = 2, goodput, adaptive), the old tree, then this one
      for tree in old new; do
        dir=$PWD; [ $tree = old ] && dir=$PWD/.gl/old
        (cd "$dir" && PYTHONPATH=$dir timeout 270 python3 -m dynaspec.cli bench --model random:llama-3.1-8b \
          --spec-config bench/adaptive_draft_model_mixed.yaml --policy-lines goodput --ks 0,2 --batch-sizes "${DRAFT_AB_BATCHES:-1,4,16,64,128}" \
          --prompt-len 128 --gen-len 64 --rounds 1 \
          --acceptance-profile acceptance_draft-model_code-edit,acceptance_draft-model_chat --no-plots \
          --out-dir "$OUT/da-$tree" > "$OUT/da-$tree.log" 2>&1); tail -1 "$OUT/da-$tree.log"
      done; python3 scripts/redesign_ab.py "$OUT/da-old" "$OUT/da-new" ;;
    drain-chain-ab)  # issue 20 (~8 min; carry .gl, .gl/old = `git archive <commit before 2026-12-07 23:50 UTC's
      # chaining through finishes> dynaspec bench scripts pyproject.toml`): the chained-step CUDA tests, then the
      # draft-model sweep at DRAFT_AB_BATCHES (default 128; no spec, k = 2, goodput, adaptive) old tree then new,
      # and each point's steps by path with their verify wait (scripts/lab/step_paths.py)
      timeout 120 python3 -m pytest -q -m cuda tests/test_chained_step.py tests/test_eagle_spec.py -k chain 2>&1 \
        | tail -2
      DRAFT_AB_BATCHES=${DRAFT_AB_BATCHES:-128} bash "$0" adaptive-draft-ab 2>&1 | grep -v "^===" | tail -8
      for tree in old new; do
        python3 scripts/lab/step_paths.py "$OUT/da-$tree/bench.json" | tee "$OUT/paths-$tree.md"
      done
      python3 scripts/lab/batch_rates.py "$OUT/da-old/bench.json" "$OUT/da-new/bench.json" ;;
    gemv-ab)  # issue 21 (~5 min; carry .gl with .gl/old = `git archive 444fe3d dynaspec bench scripts pyproject.toml`,
      # the tree before the multi-row GEMV): random Llama-3.1-8B, plain decode at batch 1-8 (1-8 rows) and n-gram
      # k = 1, 3, 4 at batch 1-2 (replayed code-edit acceptance: verify steps of 2-10 rows), old-new-old-new
      # (GEMV_ROUNDS="1" for one old-new pair, ~2.5 min)
      for round in ${GEMV_ROUNDS:-1 2}; do for tree in old new; do
        dir=$PWD; [ $tree = old ] && dir=$PWD/.gl/old
        (cd "$dir" && PYTHONPATH=$dir timeout 140 python3 -m dynaspec.cli bench --model random:llama-3.1-8b \
          --drafter ngram --max-draft-len 4 --ks 0,1,3,4 --no-schedule-line --batch-sizes 1,2,4,8 --prompt-len 128 \
          --gen-len 48 --acceptance-profile acceptance_ngram_code-edit --no-plots --out-dir "$OUT/gv-$tree-$round" \
          > "$OUT/gv-$tree-$round.log" 2>&1); tail -1 "$OUT/gv-$tree-$round.log"
      done; python3 scripts/redesign_ab.py "$OUT/gv-old-$round" "$OUT/gv-new-$round"; done ;;
    det-tune)  # issue 22 (~8 min): tune the batch-invariant GEMM's tiles for this card (writes its table into
      # dynaspec/models/gemm_tile_tables/, copied to $OUT: commit it), the CUDA tests with the tuned table, then the price
      timeout 200 python3 scripts/tune_invariant_gemm.py --models random:llama-3.1-8b random:qwen2.5-1.5b \
        --report "$OUT/tiles.md" > "$OUT/tune.log" 2>&1; grep -E "^\| random|table written" "$OUT/tune.log" | tail -22
      cp dynaspec/models/gemm_tile_tables/*.json "$OUT/" 2>/dev/null
      timeout 150 python3 -m pytest -q -m cuda tests/test_deterministic_cuda.py 2>&1 | tee "$OUT/det_tests.log" | tail -4
      timeout 185 python3 scripts/deterministic_price.py --model random:llama-3.1-8b --batches 1 16 64 --k 4 --rounds 2 \
        --out "$OUT/price" > "$OUT/price.log" 2>&1; tail -10 "$OUT/price.log" ;;
    k0-ab-eagle)  # issue 21: k = 0 steps with the trained Qwen head (eagle-qwen-train first) vs no speculation
      python3 scripts/gpu_k0_ab.py --model /tmp/qwen-1.5b.gguf --eagle-head /tmp/eagle-qwen15b 2 8 64 2>&1 | tail -5 ;;
    *) echo "unknown step $step" ;;
  esac
done
