#!/usr/bin/env bash
# "Does DREAM hold up?" again, in the regime of the v4 quick start (the README's CPU quick start: tiny, sr16_64,
# residual + v + projection (smooth 10), orthogonal init, Adam 1e-3, batch 4, 2100 iterations, temperature 0.6),
# where the samples carry no visible speckle; experiments/dream_retest.sh did the same in the v1 regime (Adam 5e-4,
# batch 8, default init, temperature 1), whose samples still did.
#
#   bash experiments/dream_retest_v4.sh train SEED..      standard and DREAM p=1 for each seed
#   bash experiments/dream_retest_v4.sh train-p SEED..    the p sweep (p = 0 / 0.5 / 2) for each seed
#                                                         (P="0" ... runs only those p values)
#   bash experiments/dream_retest_v4.sh train-fp32 SEED.. the same in fp32 (where --dtype auto picks bf16)
#   bash experiments/dream_retest_v4.sh cost              the cost of an iteration of each, alone on the machine
#                                                         (DTYPE=fp32 ... times fp32 instead of --dtype auto)
#   bash experiments/dream_retest_v4.sh steps SEED..      metric vs sampling steps of standard and DREAM p=1
#   bash experiments/dream_retest_v4.sh report            results files, plots, tables (results/dream_v4*_report.txt)
#
# Run from the repository root after `python data.py prepare ../shared/data/faces data/faces_16_64 --lr 16 --hr 64
# --val 100`. Each training run checkpoints at every evaluation, so a stopped call continues where it stopped (a
# finished run is skipped). Two lanes at one thread each (OMP_NUM_THREADS=1), e.g. `train 0` beside `train 1`: quality
# per iteration does not depend on the load; seconds come from `cost`, run with nothing else on the machine.
set -euo pipefail
D=data/faces_16_64
R=runs/dream_v4
ITERS=2100
C="--task sr16_64 --data $D --model tiny --batch-size 4 --lr 1e-3 --max-iters $ITERS --init orthogonal
   --residual --pred v --project --project-smooth 10 --temperature 0.6
   --eval-every 350 --ckpt-every 350 --eval-n 32 --eval-steps 50"

finished() {  # the run in $1 logged its evaluation at the last iteration
  [ -f "$1/log.jsonl" ] && python -c "import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
sys.exit(0 if any(r.get('eval') and r['step'] == int(sys.argv[2]) for r in rows) else 1)" "$1/log.jsonl" $ITERS
}

train_one() {  # OUT, extra flags
  local out=$1; shift
  if finished "$out"; then echo "$out: done"; return; fi
  if [ -f "$out/ckpt.pt" ]; then python train.py $C "$@" --out "$out" --resume
  else python train.py $C "$@" --out "$out" --overwrite; fi
}

steps_one() {  # metric vs sampling steps for one seed: DDPM and DDIM at 2..200 steps, DDPM at 500 and 2000
  # (the paper's), at the regime's temperature 0.6; the first 16 held-out faces, one sampling seed for every point.
  # A sweep writes its PNG last, after its final row: a sweep without one is (re)done
  local s=$1 S="--sweep steps --data $D --n 16 --batch-size 16"
  local runs="$R/std_s$s $R/dream_s$s"
  for r in $runs; do finished $r || { echo "$r: not finished" >&2; exit 1; }; done
  [ -f results/dream_v4_steps_short_s$s.png ] || python experiments/sweep.py $S --runs $runs \
    --labels standard DREAM_p=1 --steps 2 5 10 20 50 100 200 --sampler ddpm ddim --out results/dream_v4_steps_short_s$s
  # the same few-step DDPM at temperature 1 (DDPM as written, the paper's sampler): 0.6 with < 50 DDPM steps leaves
  # more noise, not less (README "What made it work"), which would handicap both models at the short end
  [ -f results/dream_v4_steps_t1_s$s.png ] || python experiments/sweep.py $S --runs $runs \
    --labels standard DREAM_p=1 --steps 2 5 10 20 50 100 200 --sampler ddpm --temperature 1 \
    --out results/dream_v4_steps_t1_s$s
  [ -f results/dream_v4_steps_long_s$s.png ] || python experiments/sweep.py $S --runs $runs \
    --labels standard DREAM_p=1 --steps 500 2000 --sampler ddpm --out results/dream_v4_steps_long_s$s
}

merge() {  # OUT CSV..: one CSV with the first file's header; sweep labels can't hold spaces, the README's do
  local out=$1; shift
  { head -n 1 "$1"; tail -q -n +2 "$@"; } | sed 's/DREAM_p=1/DREAM p=1/' > "$out"
}

case "${1:-}" in
  train)
    shift
    for s in "$@"; do
      train_one $R/std_s$s --seed $s
      train_one $R/dream_s$s --seed $s --dream
    done ;;
  train-p)
    shift
    for s in "$@"; do
      for p in ${P:-0 0.5 2}; do train_one $R/p${p/./}_s$s --seed $s --dream --dream-p $p; done
    done ;;
  train-fp32)  # fp32 twins of `train`, for machines where --dtype auto picks bf16 autocast
    shift
    for s in "$@"; do
      train_one $R/std_s${s}_fp32 --seed $s --dtype fp32
      train_one $R/dream_s${s}_fp32 --seed $s --dream --dtype fp32
    done ;;
  cost)  # DTYPE=fp32 (or bf16) times that dtype instead of the one --dtype auto picks
    x=${DTYPE:+_$DTYPE}
    T="--task sr16_64 --data $D --model tiny --batch-size 4 --lr 1e-3 --max-iters 200 --eval-every 200 --eval-n 2
       --eval-steps 2 --overwrite --init orthogonal --residual --pred v --project --dtype ${DTYPE:-auto}"
    python train.py $T --out $R/t_std$x
    python train.py $T --dream --out $R/t_dream$x
    python experiments/collect_eval.py --runs $R/t_std$x $R/t_dream$x --labels standard DREAM \
      --out results/dream_v4_cost$x.csv ;;
  steps)
    shift
    for s in "$@"; do steps_one $s; done ;;
  report)
    runs=(); labels=()
    for s in 0 1 2; do  # the p sweep takes the runs that have finished, and says which have not
      for rl in "std_s$s:standard" "p0_s$s:DREAM p=0" "p05_s$s:DREAM p=0.5" "dream_s$s:DREAM p=1" "p2_s$s:DREAM p=2"; do
        run=$R/${rl%%:*} label=${rl#*:}
        if finished $run; then runs+=($run); labels+=("$label")
        else echo "p sweep: $run not finished, left out" >&2; fi
      done
    done
    python experiments/collect_eval.py --all --out results/dream_v4_p_sweep.csv --runs "${runs[@]}" \
      --labels "${labels[@]}"
    python experiments/collect_eval.py --all --out results/dream_v4_curves.csv \
      --runs $R/std_s0 $R/std_s1 $R/std_s2 $R/dream_s0 $R/dream_s1 $R/dream_s2 \
      --labels standard standard standard "DREAM p=1" "DREAM p=1" "DREAM p=1"
    for s in 0 1 2; do steps_one $s; done
    merge results/dream_v4_steps.csv results/dream_v4_steps_{short,long}_s[012].csv
    python experiments/dream_report.py --curves results/dream_v4_curves.csv --steps results/dream_v4_steps.csv \
      --cost results/dream_v4_cost.csv --out results/dream_v4 | tee results/dream_v4_report.txt
    merge results/dream_v4_steps_t1.csv results/dream_v4_steps_t1_s[012].csv
    python experiments/dream_report.py --curves results/dream_v4_curves.csv --steps results/dream_v4_steps_t1.csv \
      --cost results/dream_v4_cost.csv --out results/dream_v4_t1 | tee results/dream_v4_t1_report.txt
    python experiments/dream_report.py --curves results/dream_v4_p_sweep.csv --cost results/dream_v4_cost.csv \
      --out results/dream_v4_p | tee results/dream_v4_p_report.txt
    if finished $R/std_s2_fp32 && finished $R/dream_s2_fp32; then  # the fp32 twins, where `train-fp32` ran
      python experiments/collect_eval.py --all --out results/dream_v4_fp32_curves.csv \
        --runs $R/std_s{0,1,2}_fp32 $R/dream_s{0,1,2}_fp32 \
        --labels standard standard standard "DREAM p=1" "DREAM p=1" "DREAM p=1"
      python experiments/dream_report.py --curves results/dream_v4_fp32_curves.csv \
        $( [ -f results/dream_v4_cost_fp32.csv ] && echo --cost results/dream_v4_cost_fp32.csv ) \
        --out results/dream_v4_fp32 | tee results/dream_v4_fp32_report.txt
      # bf16 minus fp32, paired by seed, for each method (the fp32 run is the `--standard` of each report); the
      # `train` runs are bf16 only where --dtype auto picks it, as on the machine of the README's numbers
      runs=(); labels=()
      for rl in "std:standard" "dream:DREAM p=1"; do
        for s in 0 1 2; do
          runs+=($R/${rl%%:*}_s${s}_fp32 $R/${rl%%:*}_s$s); labels+=("${rl#*:}, fp32" "${rl#*:}, bf16")
        done
      done
      python experiments/collect_eval.py --all --out results/dream_v4_dtype.csv --runs "${runs[@]}" \
        --labels "${labels[@]}"
      for m in standard "DREAM p=1"; do
        python experiments/dream_report.py --curves results/dream_v4_dtype.csv --standard "$m, fp32" \
          --out "results/dream_v4_dtype_${m%% *}"
      done | tee results/dream_v4_dtype_report.txt
    fi ;;
  *)
    echo "usage: bash experiments/dream_retest_v4.sh train SEED.. | train-p SEED.. | train-fp32 SEED.. | cost |" \
      "steps SEED.. | report" >&2
    exit 2 ;;
esac
