#!/usr/bin/env bash
# The CPU quick start (docs/quickstart.md): its time from a fresh clone, its seed spread, its diagnostics, the
# training-free baselines, and the runs behind the table of what each option buys.
#
#   bash experiments/quickstart.sh time        prepare + seed 0 alone on the machine -> results/quickstart/time.csv,
#                                              seed0.csv (TAG=_bf16: time_bf16.csv, seed0_bf16.csv; extra train.py
#                                              flags after `time` override the command's)
#   bash experiments/quickstart.sh seeds       seeds 1 and 2 (one thread each, two at a time is fine) -> seeds.csv
#   bash experiments/quickstart.sh diagnose    colour shift / hf power / flat noise of the 3 seeds (diagnose.csv) and
#                                              the sampling temperature (temperature.csv)
#   bash experiments/quickstart.sh variants    batch 2, Adam 5e-4 and 2e-3 against the recipe (batch_lr.csv)
#   bash experiments/quickstart.sh baselines   bicubic / Lanczos / bicubic + projection (baselines.csv)
#   bash experiments/quickstart.sh options     SR3 as the paper, then each option, Adam 2e-4, batch 8, 1500 it.
#                                              (formulation.csv, formulation_diagnose.*, lr.csv) and the levers of
#                                              the batch-8 recipe (levers.csv, v2_3000.csv)
#   SMOKE=1 bash experiments/quickstart.sh all every stage on 24 faces, a few iterations, into runs/smoke/quickstart
#
# Run from the repository root with ../shared beside it (the faces; 00000-00099 held out). Resumable run by run: a
# finished training run is skipped, a stopped one resumed.
set -euo pipefail
export MPLBACKEND=Agg
SRC=../shared/data/faces
D=data/faces_16_64
R=runs
OUT=results/quickstart/
ITERS=2100 B2_ITERS=3200 N=100 STEPS=100 OPT_ITERS=1500 LONG_ITERS=3000
if [ -n "${SMOKE:-}" ]; then
  python experiments/common.py smoke-data $SRC runs/smoke/faces_16_64 --n 24 --val 8
  SRC=runs/smoke/faces_16_64_src D=runs/smoke/faces_16_64 R=runs/smoke/quickstart OUT=runs/smoke/quickstart/results_
  ITERS=4 B2_ITERS=6 N=4 STEPS=2 OPT_ITERS=4 LONG_ITERS=6
fi
mkdir -p "$R" "$(dirname "$OUT")"
# the quick-start command (README); SMOKE shortens it
Q="--task sr16_64 --data $D --model tiny --batch-size 4 --lr 1e-3 --max-iters $ITERS --eval-every $ITERS --eval-n $N
   --eval-steps $STEPS --init orthogonal --residual --pred v --project --project-smooth 10 --dream --temperature 0.6"
[ -n "${SMOKE:-}" ] && Q="$Q --timesteps 100"

train_one() {  # OUT ITERS, extra flags: skip a finished run, resume a stopped one
  local out=$1 iters=$2; shift 2
  if python experiments/common.py finished "$out" "$iters"; then echo "$out: done"; return; fi
  if [ -f "$out/ckpt.pt" ]; then python train.py "$@" --out "$out" --resume
  else python train.py "$@" --out "$out" --overwrite; fi
}

time_seed0() {  # wall clock of prepare + train.py (with its final evaluation), from a fresh clone, alone
  local out=${OUT}time${TAG:-}.csv t0 t1 t2
  t0=$(date +%s.%N)
  python data.py prepare $SRC $D --lr 16 --hr 64 --val $( [ -n "${SMOKE:-}" ] && echo 8 || echo 100 ) --quiet
  t1=$(date +%s.%N)
  python train.py $Q --out $R/quick --overwrite "$@"
  t2=$(date +%s.%N)
  printf 'what,extra_flags,prepare_s,train_py_s,total_s\nREADME CPU quick start,%s,%.1f,%.1f,%.1f\n' "$*" \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t2 - $t0" | bc)" > "$out"
  cat "$out"
  python experiments/common.py collect --runs $R/quick --labels "quick start" --out ${OUT}seed0${TAG:-}.csv
  python -c "import sys; from PIL import Image; g = Image.open(sys.argv[1]); h = min(g.height, 6 * 66)
g.crop((0, 0, g.width, h)).resize((2 * g.width, 2 * h), Image.NEAREST).save(sys.argv[2])" \
    $R/quick/samples_$(printf %07d $ITERS).png ${OUT}grid.png
}

seeds() {
  for s in 1 2; do train_one $R/quick_s$s $ITERS $Q --seed $s; done
  python experiments/common.py collect --runs $R/quick $R/quick_s1 $R/quick_s2 --labels "quick start" "quick start" \
    "quick start" --out ${OUT}seeds.csv
  python experiments/common.py summarize ${OUT}seeds.csv --by label \
    --metrics psnr ssim consistency flat_noise grid_texture
}

diagnose() {
  local G="--data $D --n $N --steps $STEPS --project --project-smooth 10"
  rm -f ${OUT}diagnose.csv ${OUT}temperature.csv
  for r in quick quick_s1 quick_s2; do
    python experiments/sr_diagnose.py --ckpt $R/$r/ckpt.pt $G --label "quick start" --csv ${OUT}diagnose.csv
    for t in 0.4 0.6 0.8; do
      python experiments/sr_diagnose.py --ckpt $R/$r/ckpt.pt $G --temperature $t \
        --label "quick start, temperature $t" --csv ${OUT}temperature.csv
    done
  done
  python experiments/common.py summarize ${OUT}temperature.csv --by label --metrics psnr ssim flat_noise grid_texture
}

variants() {  # seed 0 at one thread beside another job, batch 2, Adam 5e-4 and 2e-3
  train_one $R/qr_b4_orth $ITERS $Q
  train_one $R/qr_b2 $B2_ITERS $Q --batch-size 2 --max-iters $B2_ITERS --eval-every $B2_ITERS
  train_one $R/qr_b4_lr5e4 $ITERS $Q --lr 5e-4
  train_one $R/qr_b4_lr2e3 $ITERS $Q --lr 2e-3
  python experiments/common.py collect --runs $R/qr_b4_orth $R/qr_b2 $R/qr_b4_lr5e4 $R/qr_b4_lr2e3 --labels \
    "quick start, seed 0 at one thread" "batch 2, 3200 it." "Adam 5e-4" "Adam 2e-3" --out ${OUT}batch_lr.csv
}

options() {  # SR3 as the paper, then one option at a time (Adam 2e-4, batch 8, 1500 iterations, seed 0)
  local C="--task sr16_64 --data $D --model tiny --batch-size 8 --lr 2e-4 --max-iters $OPT_ITERS
           --eval-every $OPT_ITERS --eval-n $N --eval-steps 50 --seed 0"
  [ -n "${SMOKE:-}" ] && C="$C --eval-steps 2 --timesteps 100"
  train_one $R/g16_eps $OPT_ITERS $C --norm-groups 16
  train_one $R/g8_eps $OPT_ITERS $C
  train_one $R/g8_v $OPT_ITERS $C --pred v
  train_one $R/res_eps $OPT_ITERS $C --residual
  train_one $R/res_v $OPT_ITERS $C --residual --pred v
  train_one $R/res_v_ls2 $OPT_ITERS $C --residual --pred v --noise-cond log_sigma
  train_one $R/qs_lr2e4 $OPT_ITERS $C --residual --pred v --project
  train_one $R/lr5e4 $OPT_ITERS $C --residual --pred v --project --lr 5e-4
  train_one $R/cos5e4 $OPT_ITERS $C --residual --pred v --project --lr 5e-4 --warmup 100 --lr-schedule cosine
  train_one $R/dream1 $OPT_ITERS $C --residual --pred v --project --dream
  python experiments/common.py collect --runs $R/g16_eps $R/g8_eps $R/g8_v $R/res_v $R/res_v_ls2 --labels \
    "SR3 eps, tiny 16 groups (old preset)" "SR3 eps, 8 groups" "v-prediction, 8 groups" "residual + v, 8 groups" \
    "residual + v + log-sigma cond" --out ${OUT}formulation.csv
  rm -f ${OUT}formulation_diagnose.csv ${OUT}formulation_diagnose.json
  for r in g16_eps g8_eps g8_v res_eps res_v; do
    python experiments/sr_diagnose.py --ckpt $R/$r/ckpt.pt --data $D --n $N --label $r \
      --csv ${OUT}formulation_diagnose.csv --json ${OUT}formulation_diagnose.json
  done
  python experiments/common.py collect --runs $R/qs_lr2e4 $R/lr5e4 $R/cos5e4 $R/dream1 --labels \
    "residual + v + projection, Adam 2e-4" "same, Adam 5e-4" "same, 5e-4 + 100 warm-up + cosine decay" \
    "Adam 2e-4 + DREAM p=1" --out ${OUT}lr.csv
  # the levers of the batch-8 recipe (Adam 1e-3, temperature 0.6, 100 steps, PyTorch's default init)
  local V="--task sr16_64 --data $D --model tiny --batch-size 8 --lr 1e-3 --max-iters $OPT_ITERS
           --eval-every $OPT_ITERS --eval-n $N --eval-steps $STEPS --residual --pred v --project --dream
           --temperature 0.6"
  [ -n "${SMOKE:-}" ] && V="$V --timesteps 100"
  train_one $R/qr_cos $OPT_ITERS $V --lr-schedule cosine
  train_one $R/qr_bil $OPT_ITERS $V --upsample bilinear
  train_one $R/qr_l2 $OPT_ITERS $V --loss l2
  train_one $R/qr_zero $OPT_ITERS $V --init zero
  train_one $R/qr_orth $OPT_ITERS $V --init orthogonal
  local B4=$(( OPT_ITERS * 5 / 3 ))
  for s in 0 1 2; do train_one $R/qr_b4_s$s $B4 $V --batch-size 4 --max-iters $B4 --eval-every $B4 --seed $s; done
  train_one $R/qr_lr2e3 $OPT_ITERS $V --lr 2e-3
  python experiments/common.py collect --runs $R/qr_cos $R/qr_bil $R/qr_l2 $R/qr_zero $R/qr_orth $R/qr_lr2e3 \
    $R/qr_b4_s0 $R/qr_b4_s1 $R/qr_b4_s2 --labels "cosine lr schedule" "bilinear upsample" "L2 loss" \
    "zero init" "orthogonal init" "Adam 2e-3" "batch 4, 2500 it." "batch 4, 2500 it." "batch 4, 2500 it." \
    --out ${OUT}levers.csv
  train_one $R/qs3000 $LONG_ITERS $V --max-iters $LONG_ITERS --eval-every $OPT_ITERS
  python experiments/common.py collect --all --runs $R/qs3000 --labels "batch-8 recipe, 3000 it." \
    --out ${OUT}v2_3000.csv
}

cmd=${1:-}
shift || true
case "$cmd" in
  time) time_seed0 "$@" ;;
  seeds) seeds ;;
  diagnose) diagnose ;;
  variants) variants ;;
  baselines) python experiments/baselines.py --data $D/val --out ${OUT}baselines.csv ;;
  options) options ;;
  all)
    [ -f $R/quick/ckpt.pt ] || time_seed0
    seeds; diagnose; variants
    python experiments/baselines.py --data $D/val --out ${OUT}baselines.csv
    options ;;
  *) echo "usage: bash experiments/quickstart.sh time | seeds | diagnose | variants | baselines | options | all" \
       "(SMOKE=1: a check on 24 faces)" >&2
     exit 2 ;;
esac
