#!/usr/bin/env bash
# Speed (docs/speed.md): bench.py on the paper network, and where the quick start's tiny step could get faster.
# Run each alone on the machine: it reports seconds.
#
#   bash experiments/speed.sh bench      python bench.py --json --mem-table --budget 120 ->
#                                        results/speed/bench_cpu_<kind>.txt (kind from the CPU flags: avx2,
#                                        avx512_bf16, amx)
#   bash experiments/speed.sh tiny       one tiny sr16_64 DREAM step under each lever (tiny_levers.csv) and the
#                                        batch sizes without the compile row (tiny_batch.csv)
#   SMOKE=1 bash experiments/speed.sh all  both, on a tiny network and 24 faces, into runs/smoke/speed
#
# GPU numbers come from experiments/gpu_check.sh (results/speed/gpu_<name>.json).
set -euo pipefail
export MPLBACKEND=Agg
D=data/faces_16_64
OUT=results/speed/
BENCH="--json --mem-table --budget 120"
TINY=""
if [ -n "${SMOKE:-}" ]; then
  python experiments/common.py smoke-data ../shared/data/faces runs/smoke/faces_16_64 --n 24 --val 8
  D=runs/smoke/faces_16_64 OUT=runs/smoke/speed/ BENCH="--model tiny --res 32 --iters 1 --budget 5 --no-probe --json"
  TINY="--rounds 1 --per-round 1"
fi
mkdir -p "$OUT"

cpu_kind() {  # the flag that decides --dtype auto's choice on a CPU (../shared/DESIGN.md "These machines")
  if grep -qw amx_bf16 /proc/cpuinfo; then echo amx
  elif grep -qw avx512_bf16 /proc/cpuinfo; then echo avx512_bf16
  else echo avx2; fi
}

bench() { python bench.py $BENCH | tee "${OUT}bench_cpu_$(cpu_kind).txt"; }
tiny() {
  local compile=""
  [ -n "${SMOKE:-}" ] && compile=--no-compile
  python experiments/tiny_speed.py --data $D $TINY $compile --out ${OUT}tiny_levers.csv
  python experiments/tiny_speed.py --data $D $TINY --no-compile --out ${OUT}tiny_batch.csv
}

case "${1:-}" in
  bench) bench ;;
  tiny) tiny ;;
  all) bench; tiny ;;
  *) echo "usage: bash experiments/speed.sh bench | tiny | all   (SMOKE=1: a quick check)" >&2; exit 2 ;;
esac
