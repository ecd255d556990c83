#!/usr/bin/env bash
# Distributed training on this machine: 2 processes x 1 thread (DDP, gloo) against 1 process x
# 2 threads, same global batch, alternated. Usage: bash bench/bench_ddp.sh [DATA_DIR]
# DATA_DIR defaults to a prepare of ../shared/corpus/xiaohuangji_20k.tsv in /tmp/xhj.
set -euo pipefail
cd "$(dirname "$0")/.."
X=.venv/bin/xianliao
DATA=${1:-/tmp/xhj}
[ -f "$DATA/meta.json" ] || $X prepare ../shared/corpus/xiaohuangji_20k.tsv --out "$DATA" --quiet
ARGS="$DATA --steps 150 --batch-size 64 --hidden-size 256 --emb-size 128 --eval-every 100000 --log-every 50 --quiet --force"
summary='import json,sys; r=json.loads(sys.stdin.read().splitlines()[-1]); print(sys.argv[1], r["target_tokens_per_s"], r["peak_rss_mb"], r["seconds"])'
for round in 1 2; do
  OMP_NUM_THREADS=2 $X train $ARGS --out /tmp/bench_ddp1 --threads 2 2>/dev/null | python3 -c "$summary" 1x2
  $X train $ARGS --out /tmp/bench_ddp2 --nproc 2 2>/dev/null | python3 -c "$summary" 2x1
  uptime
done
