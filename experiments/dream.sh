#!/usr/bin/env bash
# Does DREAM hold up? (docs/dream.md) Standard loss vs DREAM p=1 and the p sweep, 3 seeds, in the regime of the CPU
# quick start (tiny, sr16_64, residual + v + projection (smooth 10), orthogonal init, Adam 1e-3, batch 4, 2100
# iterations, temperature 0.6); REGIME=v1 runs the earlier regime (Adam 5e-4, batch 8, 1500 iterations, PyTorch's
# default init, temperature 1) into runs/dream_v1 and results/dream/v1_*.
#
#   bash experiments/dream.sh train SEED..       standard and DREAM p=1 for each seed
#   bash experiments/dream.sh train-p SEED..     the p sweep (p = 0 / 0.5 / 2; P="0" ... runs only those)
#   bash experiments/dream.sh train-fp32 SEED..  the same as `train` in fp32 (where --dtype auto picks bf16)
#   bash experiments/dream.sh cost               the cost of an iteration of each, alone on the machine
#                                                (DTYPE=fp32 times fp32 instead of what --dtype auto picks)
#   bash experiments/dream.sh steps SEED..       metric vs sampling steps of the final standard and DREAM p=1 models
#   bash experiments/dream.sh report             results/dream/*: CSVs, plots, the tables of docs/dream.md
#   SMOKE=1 bash experiments/dream.sh all        every stage on 24 faces, a few iterations (runs/smoke/dream): a check
#
# Run from the repository root after `python data.py prepare ../shared/data/faces data/faces_16_64 --lr 16 --hr 64
# --val 100`. Resumable run by run: each training run checkpoints at every evaluation, so a stopped call continues
# where it stopped and a finished run is skipped; a steps sweep with its PNG written is skipped. Two lanes at one
# thread each (OMP_NUM_THREADS=1, e.g. `train 0` beside `train 1`): quality per iteration does not depend on the
# load; seconds come from `cost`, run with nothing else on the machine.
set -euo pipefail
export MPLBACKEND=Agg
D=data/faces_16_64
R=runs/dream_v4
OUT=results/dream/
ITERS=2100
EVERY=350
SEEDS="0 1 2"
C="--task sr16_64 --model tiny --batch-size 4 --lr 1e-3 --init orthogonal --residual --pred v --project
   --project-smooth 10 --temperature 0.6 --eval-n 32 --eval-steps 50"
T="--task sr16_64 --model tiny --batch-size 4 --lr 1e-3 --init orthogonal --residual --pred v --project"
N_STEPS=16
SHORT="2 5 10 20 50 100 200"
LONG="500 2000"
if [ "${REGIME:-}" = v1 ]; then
  R=runs/dream_v1 OUT=results/dream/v1_ ITERS=1500 EVERY=250
  C="--task sr16_64 --model tiny --batch-size 8 --lr 5e-4 --residual --pred v --project --eval-n 32 --eval-steps 50"
  T="--task sr16_64 --model tiny --batch-size 8 --lr 5e-4 --residual --pred v --project"
fi
COST_ITERS=200
if [ -n "${SMOKE:-}" ]; then  # a few iterations on 24 faces: checks that every stage runs, writes nothing in results/
  python experiments/common.py smoke-data ../shared/data/faces runs/smoke/faces_16_64 --n 24 --val 8
  D=runs/smoke/faces_16_64 R=runs/smoke/dream OUT=runs/smoke/dream/results_ ITERS=4 EVERY=2 SEEDS="0 1"
  C="$C --eval-n 2 --eval-steps 2 --timesteps 100" T="$T --timesteps 100"
  N_STEPS=2 SHORT="2 5" LONG="10" COST_ITERS=3
fi
C="$C --data $D --max-iters $ITERS --eval-every $EVERY --ckpt-every $EVERY"
mkdir -p "$R" "$(dirname "$OUT")"

train_one() {  # OUT, extra flags: skip a finished run, resume a stopped one
  local out=$1; shift
  if python experiments/common.py finished "$out" $ITERS; then echo "$out: done"; return; fi
  if [ -f "$out/ckpt.pt" ]; then python train.py $C "$@" --out "$out" --resume
  else python train.py $C "$@" --out "$out" --overwrite; fi
}

steps_one() {  # one seed: DDPM and DDIM at $SHORT steps (temperature of the run), DDPM at temperature 1, DDPM at
  # $LONG (the paper's 2000); the first $N_STEPS held-out faces, one sampling seed for every point
  local s=$1 S="--sweep steps --data $D --n $N_STEPS --batch-size 16"
  local runs="$R/std_s$s $R/dream_s$s"
  for r in $runs; do python experiments/common.py finished $r $ITERS || { echo "$r: not finished" >&2; exit 1; }; done
  [ -f $R/steps_short_s$s.png ] || python experiments/sweep.py $S --runs $runs --labels standard DREAM_p=1 \
    --steps $SHORT --sampler ddpm ddim --out $R/steps_short_s$s
  [ -f $R/steps_t1_s$s.png ] || python experiments/sweep.py $S --runs $runs --labels standard DREAM_p=1 \
    --steps $SHORT --sampler ddpm --temperature 1 --out $R/steps_t1_s$s
  [ -f $R/steps_long_s$s.png ] || python experiments/sweep.py $S --runs $runs --labels standard DREAM_p=1 \
    --steps $LONG --sampler ddpm --out $R/steps_long_s$s
}

report() {
  local runs=() labels=()
  python experiments/baselines.py --data $D/val --n 32 --out ${OUT}baselines_32.csv  # bicubic, back-projection
  for s in $SEEDS; do  # the p sweep takes the runs that have finished, and says which have not
    for rl in "std_s$s:standard" "p0_s$s:DREAM p=0" "p05_s$s:DREAM p=0.5" "dream_s$s:DREAM p=1" "p2_s$s:DREAM p=2"; do
      local run=$R/${rl%%:*} label=${rl#*:}
      if python experiments/common.py finished $run $ITERS; then runs+=($run); labels+=("$label")
      else echo "p sweep: $run not finished, left out" >&2; fi
    done
  done
  python experiments/common.py collect --all --out ${OUT}p_sweep.csv --runs "${runs[@]}" --labels "${labels[@]}"
  runs=(); labels=()
  for s in $SEEDS; do runs+=($R/std_s$s); labels+=(standard); done
  for s in $SEEDS; do runs+=($R/dream_s$s); labels+=("DREAM p=1"); done
  python experiments/common.py collect --all --out ${OUT}curves.csv --runs "${runs[@]}" --labels "${labels[@]}"
  for s in $SEEDS; do steps_one $s; done
  local short=() long=() t1=()
  for s in $SEEDS; do short+=($R/steps_short_s$s.csv); long+=($R/steps_long_s$s.csv); t1+=($R/steps_t1_s$s.csv); done
  python experiments/common.py merge ${OUT}steps.csv "${short[@]}" "${long[@]}"
  python experiments/dream_report.py --curves ${OUT}curves.csv --steps ${OUT}steps.csv --cost ${OUT}cost.csv \
    --out ${OUT}main | tee ${OUT}main_report.txt
  [ "${REGIME:-}" = v1 ] || {
    python experiments/common.py merge ${OUT}steps_t1.csv "${t1[@]}"
    python experiments/dream_report.py --curves ${OUT}curves.csv --steps ${OUT}steps_t1.csv --cost ${OUT}cost.csv \
      --out ${OUT}t1 | tee ${OUT}t1_report.txt
  }
  python experiments/dream_report.py --curves ${OUT}p_sweep.csv --cost ${OUT}cost.csv --out ${OUT}p \
    | tee ${OUT}p_report.txt
  local last=${SEEDS##* }
  if python experiments/common.py finished $R/std_s${last}_fp32 $ITERS \
     && python experiments/common.py finished $R/dream_s${last}_fp32 $ITERS; then  # the fp32 twins, where they ran
    runs=(); labels=()
    for s in $SEEDS; do runs+=($R/std_s${s}_fp32); labels+=(standard); done
    for s in $SEEDS; do runs+=($R/dream_s${s}_fp32); labels+=("DREAM p=1"); done
    python experiments/common.py collect --all --out ${OUT}fp32_curves.csv --runs "${runs[@]}" --labels "${labels[@]}"
    local cost=()
    [ -f ${OUT}cost_fp32.csv ] && cost=(--cost ${OUT}cost_fp32.csv)
    python experiments/dream_report.py --curves ${OUT}fp32_curves.csv "${cost[@]}" --out ${OUT}fp32 \
      | tee ${OUT}fp32_report.txt
    # bf16 minus fp32, paired by seed, per method (the fp32 run is each report's --standard); the `train` runs are
    # bf16 only where --dtype auto picks it
    runs=(); labels=()
    for rl in "std:standard" "dream:DREAM p=1"; do
      for s in $SEEDS; do
        runs+=($R/${rl%%:*}_s${s}_fp32 $R/${rl%%:*}_s$s); labels+=("${rl#*:}, fp32" "${rl#*:}, bf16")
      done
    done
    python experiments/common.py collect --all --out ${OUT}dtype.csv --runs "${runs[@]}" --labels "${labels[@]}"
    for m in standard "DREAM p=1"; do
      python experiments/dream_report.py --curves ${OUT}dtype.csv --standard "$m, fp32" --out "${OUT}dtype_${m%% *}"
    done | tee ${OUT}dtype_report.txt
  fi
}

cost() {  # DTYPE=fp32 (or bf16) times that dtype instead of the one --dtype auto picks
  local x=${DTYPE:+_$DTYPE}
  local A="$T --data $D --max-iters $COST_ITERS --eval-every $COST_ITERS --eval-n 2 --eval-steps 2 --overwrite"
  python train.py $A --dtype ${DTYPE:-auto} --out $R/t_std$x
  python train.py $A --dtype ${DTYPE:-auto} --dream --out $R/t_dream$x
  python experiments/common.py collect --runs $R/t_std$x $R/t_dream$x --labels standard DREAM --out ${OUT}cost$x.csv
}

cmd=${1:-}
shift || true
case "$cmd" in
  train) for s in "$@"; do train_one $R/std_s$s --seed $s; train_one $R/dream_s$s --seed $s --dream; done ;;
  train-p) for s in "$@"; do for p in ${P:-0 0.5 2}; do
             train_one $R/p${p/./}_s$s --seed $s --dream --dream-p $p; done; done ;;
  train-fp32) for s in "$@"; do
                train_one $R/std_s${s}_fp32 --seed $s --dtype fp32
                train_one $R/dream_s${s}_fp32 --seed $s --dream --dtype fp32; done ;;
  cost) cost ;;
  steps) for s in "$@"; do steps_one $s; done ;;
  report) report ;;
  all)  # every stage in order (SMOKE=1: the check of this driver)
    for s in $SEEDS; do
      train_one $R/std_s$s --seed $s; train_one $R/dream_s$s --seed $s --dream
      for p in 0 0.5 2; do train_one $R/p${p/./}_s$s --seed $s --dream --dream-p $p; done
      train_one $R/std_s${s}_fp32 --seed $s --dtype fp32; train_one $R/dream_s${s}_fp32 --seed $s --dream --dtype fp32
    done
    cost
    DTYPE=fp32 cost
    report ;;
  *) echo "usage: bash experiments/dream.sh train SEED.. | train-p SEED.. | train-fp32 SEED.. | cost | steps SEED.. |" \
       "report | all   (REGIME=v1, SMOKE=1, P=, DTYPE=)" >&2
     exit 2 ;;
esac
