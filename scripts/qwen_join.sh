#!/usr/bin/env bash
# Join the carried chunks of the Qwen2.5-Coder pair back into its two GGUF files and check their sha256.
#
# Usage: bash scripts/qwen_join.sh [--target-only] [XFER_DIR] [DEST_DIR] [MANIFEST]
#        (defaults: .xfer, /tmp and scripts/qwen_xfer_manifest.txt)
#   --target-only: only the 1.5B (qwen-1.5b.gguf), from the chunks that hold its bytes (08..27): a session
#        that needs no 0.5B draft model carries 20 chunks instead of 28.
#
# Undoes scripts/prepare_qwen_xfer.sh, per the manifest (sizes, sha256, chunk count): checks that every
# chunk XFER_DIR/NN/chunk_NN is there with the right size (naming the missing ones otherwise), joins them
# into one stream, cuts it with head -c / tail -c into DEST_DIR/qwen-0.5b.gguf and DEST_DIR/qwen-1.5b.gguf
# and checks each file's size and sha256. When both files are already there with the right sha256 (a
# rerun on a warm machine) the chunks are not needed and nothing is rewritten. Exit 1 on any mismatch.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target_only=0
if [ "${1:-}" = --target-only ]; then target_only=1; shift; fi
xfer=${1:-.xfer}
dest=${2:-/tmp}
manifest=${3:-$root/scripts/qwen_xfer_manifest.txt}
[ -f "$manifest" ] || { echo "error: manifest $manifest not found" >&2; exit 1; }
mapfile -t names < <(awk '$1 == "file" {print $2}' "$manifest")
mapfile -t sizes < <(awk '$1 == "file" {print $3}' "$manifest")
mapfile -t shas < <(awk '$1 == "file" {print $4}' "$manifest")
read -r _ want_chunks chunk_bytes < <(grep '^chunks ' "$manifest")
[ "${#names[@]}" = 2 ] || { echo "error: $manifest must name 2 files (0.5B, then 1.5B)" >&2; exit 1; }

wanted=("${!names[@]}")
[ "$target_only" = 1 ] && wanted=(1)
verified() {  # the wanted files in DEST_DIR with the manifest's size and sha256?
  local i
  for i in "${wanted[@]}"; do
    local f=$dest/${names[$i]}
    [ -f "$f" ] && [ "$(stat -Lc %s "$f")" = "${sizes[$i]}" ] || return 1
    [ "$(sha256sum "$f" | cut -d' ' -f1)" = "${shas[$i]}" ] || return 1
  done
}

if verified; then
  echo "already in $dest (sha256 ok): $(for i in "${wanted[@]}"; do echo -n "${names[$i]} "; done)"
  exit 0
fi
total=$((sizes[0] + sizes[1]))
first_chunk=0
[ "$target_only" = 1 ] && first_chunk=$((sizes[0] / chunk_bytes))  # the chunk holding the 1.5B's first byte
missing=()
for ((n = first_chunk; n < want_chunks; n++)); do
  nn=$(printf %02d "$n")
  want=$chunk_bytes
  [ "$n" = $((want_chunks - 1)) ] && want=$((total - (want_chunks - 1) * chunk_bytes))
  chunk=$xfer/$nn/chunk_$nn
  if [ ! -f "$chunk" ] || [ "$(stat -Lc %s "$chunk")" != "$want" ]; then missing+=("$nn"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "error: ${#missing[@]} of $((want_chunks - first_chunk)) chunks missing or short in $xfer: ${missing[*]}" >&2
  echo "       (carry each as its own device call on the same warm machine; see scripts/gpu_qwen_pair.sh)" >&2
  exit 1
fi
mkdir -p "$dest"
pair=$dest/qwen-pair.bin
trap 'rm -f "$pair"' EXIT
for ((n = first_chunk; n < want_chunks; n++)); do nn=$(printf %02d "$n"); cat "$xfer/$nn/chunk_$nn"; done > "$pair"
if [ "$target_only" = 0 ]; then
  head -c "${sizes[0]}" "$pair" > "$dest/${names[0]}"
fi
tail -c "+$((sizes[0] - first_chunk * chunk_bytes + 1))" "$pair" > "$dest/${names[1]}"
rm -f "$pair"
if ! verified; then
  for i in "${wanted[@]}"; do
    f=$dest/${names[$i]}
    echo "  $f: $(stat -Lc %s "$f") bytes, sha256 $(sha256sum "$f" | cut -d' ' -f1); want ${sizes[$i]}, ${shas[$i]}" >&2
  done
  echo "error: the joined pair does not match $manifest" >&2
  exit 1
fi
echo "joined into $dest (sha256 ok): $(for i in "${wanted[@]}"; do echo -n "${names[$i]} "; done)"
