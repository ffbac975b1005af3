#!/bin/bash
# Wall time of PROGRAM N run plain, under `retrace record`, and under `retrace replay` offline,
# 5 rounds interleaved; prints each mode's five times (ms, sorted) and the recording's sizes.
# Per-operation cost: run with N and with 0, subtract, divide by N (see BENCHMARKS.md).
#   bench/plain-record-replay.sh PYTHON bench/programs/lock_loop.py 200000
set -euo pipefail
py=$1 program=$2 n=$3
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1 || true; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
for _ in 1 2 3 4 5; do
  echo "plain $(ms "$py" "$program" "$n")"
  rm -rf "$scratch/rec"
  echo "record $(ms node "$root/dist/cli.cjs" record -o "$scratch/rec" -- "$py" "$program" "$n")"
  echo "replay $(ms unshare -n node "$root/dist/cli.cjs" replay "$scratch/rec")"
done | sort -k1,1 -k2n | awk '{a[$1]=a[$1]" "$2} END {for (k in a) print k ":" a[k]}'
du -b "$scratch"/rec/trace/*
