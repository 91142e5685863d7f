#!/usr/bin/env bash
# Relay Diffusion at CPU scale (docs/relay.md): stage 2 (16 -> 64 faces, tiny, 1500 iterations) with RDM's blur
# process and with --prob-length 0.5, the sampler ablations, s_noise, block noise in training, relay vs SR3 at equal
# network evaluations, DREAM for relay, two-stage generation, and the 64 -> 256 smoke timing.
#
#   bash experiments/relay.sh stage2      the stage-2 runs, 3 seeds (stage2.csv, stage2_curves.csv)
#   bash experiments/relay.sh diagnose    sampler ablations, per-noise-level errors, relay vs SR3, s_noise
#                                         (diagnose.*, vs_sr3*.csv, vs_sr3_sn1_s0.png, snoise*.csv)
#   bash experiments/relay.sh blocknoise  block noise in training off (block_noise.csv)
#   bash experiments/relay.sh dream       DREAM for relay: seeds, cost, equal wall-clock (dream_*.csv, cost.csv)
#   bash experiments/relay.sh generate    two-stage generation (stage1_lr1e3.png, two_stage.png)
#   bash experiments/relay.sh stage1      the shipped stage 1's run (8000 it.) scored by its pixel Frechet distance to
#                                         real faces at 2000 / 4000 / 6000 / 8000 it., with references (stage1_frechet.*);
#                                         S1_RUN=DIR scores an existing run of that recipe instead of training one
#   bash experiments/relay.sh baselines   bicubic of the tile means + box projection (baselines.csv)
#   bash experiments/relay.sh r64_256     relay64 + relay64_256, 20 iterations each: timing (relay64_256_cpu.csv)
#   SMOKE=1 bash experiments/relay.sh all every stage on 24 faces, a few iterations, into runs/smoke/relay
#
# Run from the repository root after `python data.py prepare ../shared/data/faces data/faces_16_64 --lr 16 --hr 64
# --val 100` and `REGIME=v1 bash experiments/dream.sh train 0 1 2` (its standard SR3 runs runs/dream_v1/std_s* are
# the restart-from-noise comparator: same tiny network, same 1500 iterations of batch 8). Resumable run by run.
set -euo pipefail
export MPLBACKEND=Agg
FACES=../shared/data/faces FACES256=../shared/data/faces256
D=data/faces_16_64
R=runs/relay
SR=runs/dream_v1
OUT=results/relay/
ITERS=1500 EVERY=500 N=32 HOLD=100 SEEDS="0 1 2" COST_ITERS=200
S1_ITERS=3000 S1_EVAL=64 S1_BATCH=32 R64_ITERS=20 GEN_STEPS=40 S1_SHIP=8000
FD="--n 64 500 --n-first 1000 --pcs 32 768 --seeds 0 1 2"
if [ -n "${SMOKE:-}" ]; then
  python experiments/common.py smoke-data $FACES runs/smoke/faces_16_64 --n 24 --val 8
  FACES=runs/smoke/faces_16_64_src FACES256=runs/smoke/faces_16_64_src D=runs/smoke/faces_16_64 R=runs/smoke/relay
  SR=runs/smoke/dream OUT=runs/smoke/relay/results_ ITERS=4 EVERY=2 N=2 HOLD=8 SEEDS="0" COST_ITERS=3
  S1_ITERS=4 S1_EVAL=4 S1_BATCH=4 R64_ITERS=2 GEN_STEPS=4 S1_SHIP=8 FD="--n 6 --n-first --pcs 2 --seeds 0"
fi
mkdir -p "$R" "$(dirname "$OUT")"
A="--task relay16_64 --data $FACES --holdout $HOLD --model tiny --batch-size 8 --lr 5e-4 --max-iters $ITERS
   --eval-every $EVERY --eval-n $N --eval-steps 40"
[ -n "${SMOKE:-}" ] && A="$A --eval-steps 4"

train_one() {  # OUT ITERS, train.py flags: skip a finished run, resume a stopped one
  local out=$1 iters=$2; shift 2
  if python experiments/common.py finished "$out" "$iters"; then echo "$out: done"; return; fi
  if [ -f "$out/ckpt.pt" ]; then python train.py "$@" --out "$out" --resume
  else python train.py "$@" --out "$out" --overwrite; fi
}

stage2() {
  train_one $R/r2_pl093 $ITERS $A --seed 0                                 # RDM's blur process (prob_length 0.93)
  local runs=($R/r2_pl093) labels=("prob_length 0.93 (RDM default)")
  for s in $SEEDS; do
    train_one $R/r2_pl05_s$s $ITERS $A --seed $s --prob-length 0.5          # blur process ending at sigma 0.30
    runs+=($R/r2_pl05_s$s); labels+=("prob_length 0.5")
  done
  python experiments/common.py collect --runs "${runs[@]}" --labels "${labels[@]}" --out ${OUT}stage2.csv
  python experiments/common.py collect --all --runs "${runs[@]}" --labels "${labels[@]}" --out ${OUT}stage2_curves.csv
}

diagnose() {  # first $N held-out faces, 40-step grid
  local G="--data $D --n $N"
  rm -f ${OUT}diagnose.csv ${OUT}diagnose.json ${OUT}snoise_probe.csv ${OUT}snoise.csv ${OUT}snoise.json
  python experiments/relay_diagnose.py --ckpt $R/r2_pl093/ckpt.pt $G --csv ${OUT}diagnose.csv \
    --json ${OUT}diagnose.json --label "prob_length 0.93 (RDM default), start at sigma 0.9"
  local vs=() vs1=()
  for s in $SEEDS; do
    local ck=$R/r2_pl05_s$s/ckpt.pt
    python experiments/relay_diagnose.py --ckpt $ck $G --csv ${OUT}diagnose.csv --json ${OUT}diagnose.json \
      --label "prob_length 0.5, start at sigma 0.30" --s-block 0.15 0 --heun-noise reuse fresh
    python experiments/relay_diagnose.py --ckpt $ck $G --csv ${OUT}diagnose.csv --json ${OUT}diagnose.json \
      --label "prob_length 0.5, start lower" --truncation-sigma 0.2 0.1
    # relay vs SR3 restarting from noise at equal network evaluations, RDM's s_noise 0.2 and s_noise 1
    python experiments/relay_compare.py --relay $ck --sr $SR/std_s$s/ckpt.pt --data $D --n $N --relay-steps 40 \
      --out $R/vs_sr3_s$s
    python experiments/relay_compare.py --relay $ck --sr $SR/std_s$s/ckpt.pt --data $D --n $N --relay-steps 40 \
      --s-noise 1 --out $R/vs_sr3_sn1_s$s
    vs+=($R/vs_sr3_s$s.csv); vs1+=($R/vs_sr3_sn1_s$s.csv)
    # the share of fresh noise per step (s_noise; RDM 0.2): 3 seeds at s_noise 1
    python experiments/relay_diagnose.py --ckpt $ck $G --steps 10 20 40 --s-noise 1.0 --s-block 0.15 0 \
      --label "prob_length 0.5, s_noise 1" --csv ${OUT}snoise.csv --json ${OUT}snoise.json
  done
  python experiments/common.py merge ${OUT}vs_sr3.csv "${vs[@]}"
  python experiments/common.py merge ${OUT}vs_sr3_sn1.csv "${vs1[@]}"
  cp $R/vs_sr3_sn1_s0.png ${OUT}vs_sr3_sn1_s0.png
  python experiments/relay_diagnose.py --ckpt $R/r2_pl05_s0/ckpt.pt $G --steps 40 --s-noise 0 0.2 0.5 0.7 1 \
    --label "prob_length 0.5, s_noise probe" --csv ${OUT}snoise_probe.csv
  python experiments/relay_diagnose.py --ckpt $R/r2_pl05_s0/ckpt.pt $G --steps 80 --s-noise 0.2 \
    --label "prob_length 0.5, s_noise probe" --csv ${OUT}snoise_probe.csv
  python experiments/common.py summarize ${OUT}diagnose.csv --by label s_block heun_noise truncation_sigma \
    --metrics psnr ssim flat_noise input_psnr bicubic_psnr
  python experiments/common.py summarize ${OUT}vs_sr3_sn1.csv --by method --metrics psnr ssim flat_noise
  python experiments/common.py summarize ${OUT}snoise.csv --by steps nfe s_noise s_block --metrics psnr ssim flat_noise
}

blocknoise() {  # train.py --block-noise 0: plain Gaussian noise in the blur loss
  rm -f ${OUT}block_noise.csv
  for s in $SEEDS; do
    train_one $R/r2_bn0_s$s $ITERS $A --seed $s --prob-length 0.5 --block-noise 0
    for pair in "r2_bn0_s$s|prob_length 0.5, no block noise in training" \
                "r2_pl05_s$s|prob_length 0.5, block noise in training"; do
      python experiments/relay_diagnose.py --ckpt $R/${pair%%|*}/ckpt.pt --data $D --n $N --steps 40 \
        --s-noise 0.2 1 --s-block 0 0.15 --label "${pair#*|}" --csv ${OUT}block_noise.csv
    done
  done
  python experiments/common.py summarize ${OUT}block_noise.csv --by label s_noise s_block --metrics psnr ssim flat_noise
}

dream() {
  rm -f ${OUT}dream_seeds.csv
  local runs=() labels=()
  for s in $SEEDS; do
    train_one $R/r2_dream_s$s $ITERS $A --seed $s --prob-length 0.5 --s-noise 1 --dream
    for pair in "r2_dream_s$s|prob_length 0.5, DREAM p=1" "r2_pl05_s$s|prob_length 0.5, standard"; do
      python experiments/relay_diagnose.py --ckpt $R/${pair%%|*}/ckpt.pt --data $D --n $N --steps 40 \
        --s-noise 0.2 1 --s-block 0.15 --label "${pair#*|}" --csv ${OUT}dream_seeds.csv
    done
    # the same training, evaluated like the standard runs (s_noise 0.2), for the curves at equal wall-clock
    train_one $R/r2_dreq_s$s $ITERS $A --seed $s --prob-length 0.5 --dream --snapshot-every $EVERY
  done
  python experiments/common.py summarize ${OUT}dream_seeds.csv --by label s_noise --metrics psnr ssim flat_noise
  # the cost of a stage-2 iteration, each alone on the machine (every other job paused)
  local T="--task relay16_64 --data $FACES --holdout $HOLD --model tiny --batch-size 8 --lr 5e-4 --prob-length 0.5
           --max-iters $COST_ITERS --eval-every $COST_ITERS --eval-n 2 --eval-steps 10 --overwrite"
  python train.py $T --out $R/t_relay
  python train.py $T --dream --out $R/t_relay_dream
  python experiments/common.py collect --runs $R/t_relay $R/t_relay_dream --labels standard DREAM --out ${OUT}cost.csv
  for s in $SEEDS; do runs+=($R/r2_pl05_s$s); labels+=(standard); done
  for s in $SEEDS; do runs+=($R/r2_dreq_s$s); labels+=("DREAM p=1"); done
  python experiments/common.py collect --all --runs "${runs[@]}" --labels "${labels[@]}" --out ${OUT}dream_curves.csv
  python experiments/dream_report.py --curves ${OUT}dream_curves.csv --cost ${OUT}cost.csv --out ${OUT}dream
}

generate() {  # stage 1 (EDM at 16x16, Adam 1e-3) + stage 2 (seed 0, s_noise 1), 16 samples
  train_one $R/relay16_lr1e3 $S1_ITERS --task relay16 --data $FACES --holdout $HOLD --model tiny \
    --batch-size $S1_BATCH --lr 1e-3 --max-iters $S1_ITERS --eval-every $S1_ITERS --eval-n $S1_EVAL --eval-steps $GEN_STEPS
  cp $R/relay16_lr1e3/samples_$(printf %07d $S1_ITERS).png ${OUT}stage1_lr1e3.png
  python sample.py --relay --ckpt-first $R/relay16_lr1e3/ckpt.pt --ckpt-second $R/r2_pl05_s0/ckpt.pt --n 16 \
    --steps-first $GEN_STEPS --steps-second $GEN_STEPS --s-noise 1 --out $R/relay_gen_lr1e3
  cp $R/relay_gen_lr1e3/grid.png ${OUT}two_stage.png
}

stage1() {  # the shipped stage 1's recipe (pretrained/README.md), snapshots at each quarter of its iterations
  local run=${S1_RUN:-$R/relay16_ship} q=$((S1_SHIP / 4)) snaps=() labels=()
  # a relay stage 1 logs no scored evaluation, so its last snapshot, not common.py finished, says it is done
  [ -f $run/ckpt_$(printf %07d $S1_SHIP).pt ] || train_one $run $S1_SHIP --config configs/relay16_cpu.toml \
    --data $FACES --holdout $HOLD --batch-size $S1_BATCH --max-iters $S1_SHIP --eval-every $((2 * q)) \
    --snapshot-every $q --ckpt-every 500 --eval-n $S1_EVAL --eval-steps $GEN_STEPS
  for k in 1 2 3 4; do snaps+=($run/ckpt_$(printf %07d $((k * q))).pt); labels+=("relay16, $((k * q)) it."); done
  python experiments/relay_stage1.py --data $FACES --holdout $HOLD $FD --steps $GEN_STEPS --cache $R/stage1_samples \
    --ckpt "${snaps[@]}" pretrained/relay16.pt --labels "${labels[@]}" "relay16.pt (shipped, $S1_SHIP it., bf16)" \
    --out "$(dirname ${OUT}x)"
}

r64_256() {  # the paper's 64 -> 256 setting end to end, 20 iterations per stage: a check that it runs, and its time
  local B="--data $FACES256 --holdout $( [ -n "${SMOKE:-}" ] && echo 8 || echo 32 ) --model tiny --lr 2e-4
           --max-iters $R64_ITERS --eval-every $R64_ITERS --log-every 5 --overwrite"
  python train.py --task relay64 $B --batch-size 8 --eval-n 4 --eval-steps 10 --out $R/relay64
  python train.py --task relay64_256 $B --batch-size 2 --eval-n 2 --eval-steps 10 --blur-sigma-max 2.0 \
    --prob-length 0.89 --out $R/relay64_256
  python experiments/common.py collect --runs $R/relay64 $R/relay64_256 --out ${OUT}relay64_256_cpu.csv \
    --labels "relay64 stage 1, tiny, batch 8" "relay64_256 stage 2, tiny, batch 2"
}

cmd=${1:-}
case "$cmd" in
  stage2) stage2 ;;
  diagnose) diagnose ;;
  blocknoise) blocknoise ;;
  dream) dream ;;
  generate) generate ;;
  stage1) stage1 ;;
  baselines) python experiments/baselines.py --relay $FACES --n $N --out ${OUT}baselines.csv ;;
  r64_256) r64_256 ;;
  all) stage2; diagnose; blocknoise; dream; generate; stage1
       python experiments/baselines.py --relay $FACES --n $N --out ${OUT}baselines.csv
       r64_256 ;;
  *) echo "usage: bash experiments/relay.sh stage2 | diagnose | blocknoise | dream | generate | stage1 | baselines | r64_256 |" \
       "all   (SMOKE=1: a check on 24 faces)" >&2
     exit 2 ;;
esac
