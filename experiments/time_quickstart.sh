#!/usr/bin/env bash
# Wall clock of the README's CPU quick start (prepare + train.py with its final evaluation), from a fresh clone,
# alone on the machine -> results/quickstart_time.csv. Run from the repository root with ../shared beside it.
#   bash experiments/time_quickstart.sh [OUT.csv [extra train.py flags, which override the command's]]
set -euo pipefail
export MPLBACKEND=Agg
out=${1:-results/quickstart_time.csv}
shift || true
t0=$(date +%s.%N)
python data.py prepare ../shared/data/faces data/faces_16_64 --lr 16 --hr 64 --val 100
t1=$(date +%s.%N)
python train.py --task sr16_64 --data data/faces_16_64 --model tiny --batch-size 4 --lr 1e-3 \
    --max-iters 2100 --eval-every 2100 --eval-n 100 --eval-steps 100 --init orthogonal \
    --residual --pred v --project --project-smooth 10 --dream --temperature 0.6 --out runs/quick "$@"
t2=$(date +%s.%N)
python - "$t0" "$t1" "$t2" "$out" "$*" <<'PY'
import sys
t0, t1, t2 = map(float, sys.argv[1:4])
with open(sys.argv[4], 'w') as f:
    f.write('what,extra_flags,prepare_s,train_py_s,total_s\n')
    f.write(f'README CPU quick start,{sys.argv[5]},{t1 - t0:.1f},{t2 - t1:.1f},{t2 - t0:.1f}\n')
PY
cat "$out"
