#!/usr/bin/env bash
# Move a trained EAGLE head between the GPU machine and this one, so that a later device session loads it
# instead of training it again (training took ~9 of a session's 30 device minutes on 2026-12-06).
#
#   GPU -> here: bash scripts/head_xfer.sh export HEAD_DIR PARTS_DIR
#       the head's weights in bf16 (the dtype it drafts in on the GPU; a float32 run upcasts them) split
#       into parts p_NN of 16,000,000 bytes (what one file back from $OUT may hold), its config.json and
#       sha256.txt, in PARTS_DIR; copy them to $OUT a few parts a call (at most 64 MiB back a call).
#   here: bash scripts/head_xfer.sh pack PARTS_DIR XFER_DIR
#       joins the parts, checks the sha256, splits the weights into XFER_DIR/NN/chunk_NN of at most
#       56 MiB (a call carries 64 MiB with the working tree), config.json and sha256.txt in XFER_DIR/00.
#   GPU: bash scripts/head_xfer.sh unpack XFER_DIR HEAD_DIR
#       after one call per chunk (carrying XFER_DIR/00, then 01, ...): joins, checks the sha256, writes
#       HEAD_DIR/model.safetensors and HEAD_DIR/config.json (scripts/gpu_eagle_qwen.sh's `carried-head`).
set -euo pipefail
usage="usage: head_xfer.sh export HEAD_DIR PARTS_DIR | pack PARTS_DIR XFER_DIR | unpack XFER_DIR HEAD_DIR"
[ $# = 3 ] || { echo "$usage" >&2; exit 2; }
mode=$1 from=$2 to=$3
check() {  # check DIR FILE: FILE's sha256 is the one DIR/sha256.txt names
  local want; want=$(cut -d' ' -f1 "$1/sha256.txt")
  [ "$(sha256sum "$2" | cut -d' ' -f1)" = "$want" ] || { echo "error: $2 does not match $1/sha256.txt" >&2; exit 1; }
}
case "$mode" in
  export)
    mkdir -p "$to"
    python3 - "$from/model.safetensors" "$to/model.safetensors" <<'PY'
import sys
import torch
from safetensors.torch import load_file, save_file
weights = load_file(sys.argv[1])
save_file({name: (t.to(torch.bfloat16) if t.is_floating_point() else t).contiguous() for name, t in weights.items()},
          sys.argv[2])
PY
    (cd "$to" && sha256sum model.safetensors > sha256.txt && split -b 16000000 -d -a 2 model.safetensors p_ && rm model.safetensors)
    cp "$from/config.json" "$to/"
    echo "$(ls "$to"/p_* | wc -l) parts in $to" ;;
  pack)
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    cat "$from"/p_* > "$tmp/model.safetensors"
    check "$from" "$tmp/model.safetensors"
    rm -rf "$to"; mkdir -p "$to"
    split -b 56M -d -a 2 "$tmp/model.safetensors" "$to/chunk_"
    for chunk in "$to"/chunk_*; do n=${chunk##*_}; mkdir -p "$to/$n"; mv "$chunk" "$to/$n/"; done
    cp "$from/config.json" "$from/sha256.txt" "$to/00/"
    echo "$(ls -d "$to"/[0-9][0-9] | wc -l) chunks in $to: carry one a call" ;;
  unpack)
    mkdir -p "$to"
    cat "$from"/[0-9][0-9]/chunk_* > "$to/model.safetensors"
    check "$from/00" "$to/model.safetensors"
    cp "$from/00/config.json" "$to/"
    echo "head in $to (sha256 ok)" ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
