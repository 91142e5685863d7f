#!/usr/bin/env bash
# Relay stage 2 at CPU scale (16 -> 64 faces, tiny, 1500 iterations): the runs behind the README's "Relay Diffusion"
# tables, in order. Run from the repository root after
# `python data.py prepare ../shared/data/faces data/faces_16_64 --lr 16 --hr 64 --val 100` (the held-out faces) and
# experiments/dream_retest.sh (its standard-loss SR3 runs runs/d_std_s0..2 are the restart-from-noise comparator:
# same tiny network, same 1500 iterations of batch 8).
set -euo pipefail
R="--task relay16_64 --data ../shared/data/faces --holdout 100 --model tiny --batch-size 8 --lr 5e-4 --max-iters 1500
   --eval-every 500 --eval-n 32 --eval-steps 40 --overwrite"
python train.py $R --seed 0 --out runs/r2_lr5e4                       # RDM's blur process (prob_length 0.93)
for s in 0 1 2; do
  python train.py $R --seed $s --prob-length 0.5 --out runs/r2_pl05_s$s  # blur process ending at sigma 0.30
done
python experiments/collect_eval.py --runs runs/r2_lr5e4 runs/r2_pl05_s0 runs/r2_pl05_s1 runs/r2_pl05_s2 \
  --labels "prob_length 0.93 (RDM default)" "prob_length 0.5" "prob_length 0.5" "prob_length 0.5" \
  --out results/relay_stage2.csv
python experiments/collect_eval.py --all --runs runs/r2_lr5e4 runs/r2_pl05_s0 runs/r2_pl05_s1 runs/r2_pl05_s2 \
  --labels "prob_length 0.93 (RDM default)" "prob_length 0.5" "prob_length 0.5" "prob_length 0.5" \
  --out results/relay_stage2_curves.csv

# sampler ablations and per-noise-level errors, first 32 held-out faces, 40-step grid
D="--data data/faces_16_64 --n 32 --csv results/relay_diagnose.csv --json results/relay_diagnose.json"
python experiments/relay_diagnose.py --ckpt runs/r2_lr5e4/ckpt.pt $D --label "prob_length 0.93 (RDM default), start at sigma 0.9"
for s in 0 1 2; do
  python experiments/relay_diagnose.py --ckpt runs/r2_pl05_s$s/ckpt.pt $D --label "prob_length 0.5, start at sigma 0.30" \
    --s-block 0.15 0 --heun-noise reuse fresh
  python experiments/relay_diagnose.py --ckpt runs/r2_pl05_s$s/ckpt.pt $D --label "prob_length 0.5, start lower" \
    --truncation-sigma 0.2 0.1
  # relay vs SR3 restarting from noise at equal network evaluations
  python experiments/relay_compare.py --relay runs/r2_pl05_s$s/ckpt.pt --sr runs/d_std_s$s/ckpt.pt \
    --data data/faces_16_64 --n 32 --relay-steps 40 --out results/relay_vs_sr3_s$s
done
{ cat results/relay_vs_sr3_s0.csv; tail -q -n +2 results/relay_vs_sr3_s1.csv results/relay_vs_sr3_s2.csv; } \
  > results/relay_vs_sr3_seeds.csv
python experiments/summarize.py results/relay_vs_sr3_seeds.csv --by method --metrics psnr ssim flat_noise input_psnr
python experiments/summarize.py results/relay_diagnose.csv --by label s_block heun_noise truncation_sigma \
  --metrics psnr ssim flat_noise input_psnr bicubic_psnr

# the residual noise: the sampler's share of fresh noise per step (s_noise; RDM 0.2), seed 0 probe, then 3 seeds
python experiments/relay_diagnose.py --ckpt runs/r2_pl05_s0/ckpt.pt --data data/faces_16_64 --n 32 --steps 40 \
  --s-noise 0 0.2 0.5 0.7 1 --label "prob_length 0.5, s_noise probe" --csv results/relay_snoise_probe.csv
python experiments/relay_diagnose.py --ckpt runs/r2_pl05_s0/ckpt.pt --data data/faces_16_64 --n 32 --steps 80 \
  --s-noise 0.2 --label "prob_length 0.5, s_noise probe" --csv results/relay_snoise_probe.csv
for s in 0 1 2; do
  python experiments/relay_diagnose.py --ckpt runs/r2_pl05_s$s/ckpt.pt --data data/faces_16_64 --n 32 --steps 10 20 40 \
    --s-noise 1.0 --s-block 0.15 0 --label "prob_length 0.5, s_noise 1" --csv results/relay_snoise.csv \
    --json results/relay_snoise.json --grid results/relay_snoise_s$s.png
  python experiments/relay_compare.py --relay runs/r2_pl05_s$s/ckpt.pt --sr runs/d_std_s$s/ckpt.pt \
    --data data/faces_16_64 --n 32 --relay-steps 40 --s-noise 1 --out results/relay_vs_sr3_sn1_s$s
done
{ cat results/relay_vs_sr3_sn1_s0.csv; tail -q -n +2 results/relay_vs_sr3_sn1_s1.csv results/relay_vs_sr3_sn1_s2.csv; } \
  > results/relay_vs_sr3_sn1_seeds.csv
python experiments/summarize.py results/relay_snoise.csv --by steps nfe s_noise s_block --metrics psnr ssim flat_noise
python experiments/summarize.py results/relay_vs_sr3_sn1_seeds.csv --by method --metrics psnr ssim flat_noise

# block noise in training off (train.py --block-noise 0; its evaluation samples without block noise too)
for s in 0 1 2; do
  python train.py $R --seed $s --prob-length 0.5 --block-noise 0 --out runs/r2_bn0_s$s
  python experiments/relay_diagnose.py --ckpt runs/r2_bn0_s$s/ckpt.pt --data data/faces_16_64 --n 32 --steps 40 \
    --s-noise 0.2 1 --s-block 0 0.15 --label "prob_length 0.5, no block noise in training" --csv results/relay_bn0.csv
  python experiments/relay_diagnose.py --ckpt runs/r2_pl05_s$s/ckpt.pt --data data/faces_16_64 --n 32 --steps 40 \
    --s-noise 0.2 1 --s-block 0 0.15 --label "prob_length 0.5, block noise in training" --csv results/relay_bn0.csv
done
python experiments/summarize.py results/relay_bn0.csv --by label s_noise s_block --metrics psnr ssim flat_noise

# two-stage generation: stage 1 (EDM at 16x16) + stage 2 (seed 0), 16 samples
python train.py --task relay16 --data ../shared/data/faces --holdout 100 --model tiny --batch-size 32 --lr 2e-4 \
  --max-iters 3000 --eval-every 1000 --eval-n 64 --eval-steps 40 --overwrite --out runs/relay16
python sample.py --relay --ckpt-first runs/relay16/ckpt.pt --ckpt-second runs/r2_pl05_s0/ckpt.pt --n 16 \
  --steps-first 40 --steps-second 40 --s-noise 1 --out runs/relay_gen
cp runs/relay_gen_grid.png results/relay_two_stage_sn1.png
cp runs/relay16/samples_0003000.png results/relay16_stage1_8groups.png
# stage 1 with Adam 1e-3 (the SR recipe's learning rate) instead of 2e-4: small faces, not colour noise
python train.py --task relay16 --data ../shared/data/faces --holdout 100 --model tiny --batch-size 32 --lr 1e-3 \
  --max-iters 3000 --eval-every 1000 --eval-n 64 --eval-steps 40 --overwrite --out runs/relay16_lr1e3
cp runs/relay16_lr1e3/samples_0003000.png results/relay16_stage1_lr1e3.png
python sample.py --relay --ckpt-first runs/relay16_lr1e3/ckpt.pt --ckpt-second runs/r2_pl05_s0/ckpt.pt --n 16 \
  --steps-first 40 --steps-second 40 --s-noise 1 --out runs/relay_gen_lr1e3
cp runs/relay_gen_lr1e3_grid.png results/relay_two_stage_lr1e3.png

# the cost of a stage-2 iteration, alone on the machine (200 iterations, the default threads)
# (standard then DREAM, back to back, every other job paused)
for d in "" "--dream"; do
  python train.py --task relay16_64 --data ../shared/data/faces --holdout 100 --model tiny --batch-size 8 --lr 5e-4 \
    --max-iters 200 --eval-every 200 --eval-n 2 --eval-steps 10 --prob-length 0.5 --overwrite --out runs/t_relay${d:+_dream} $d
done
python experiments/collect_eval.py --runs runs/t_relay runs/t_relay_dream --out results/relay_cost.csv --labels \
  "relay16_64 stage 2, tiny, batch 8, 200 iterations alone" "relay16_64 stage 2 + DREAM p=1, tiny, batch 8, 200 iterations alone"

# DREAM for relay: 3 seeds with --dream (p = 1), scored with their standard-loss twins (runs/r2_pl05_s*) alike
for s in 0 1 2; do
  python train.py $R --seed $s --prob-length 0.5 --s-noise 1 --dream --out runs/r2_dream_s$s
  for pair in "r2_dream_s$s|prob_length 0.5, DREAM p=1" "r2_pl05_s$s|prob_length 0.5, standard"; do
    python experiments/relay_diagnose.py --ckpt runs/${pair%%|*}/ckpt.pt --data data/faces_16_64 --n 32 --steps 40 \
      --s-noise 0.2 1 --s-block 0.15 --label "${pair#*|}" --csv results/relay_dream_seeds.csv
  done
done
python experiments/summarize.py results/relay_dream_seeds.csv --by label s_noise --metrics psnr ssim flat_noise
python experiments/baselines.py --relay ../shared/data/faces --n 32 --out results/relay_baselines.csv

# DREAM for relay at equal wall-clock: the DREAM runs again, evaluated like their standard twins (s_noise 0.2, the
# default; the runs above were evaluated at s_noise 1 in training) -- the same training, bit for bit -- with snapshots
for s in 0 1 2; do
  python train.py $R --seed $s --prob-length 0.5 --dream --snapshot-every 500 --out runs/r2_dreq_s$s
done
python experiments/collect_eval.py --all --runs runs/r2_pl05_s0 runs/r2_pl05_s1 runs/r2_pl05_s2 runs/r2_dreq_s0 \
  runs/r2_dreq_s1 runs/r2_dreq_s2 --labels standard standard standard "DREAM p=1" "DREAM p=1" "DREAM p=1" \
  --out results/relay_dream_curves.csv
python experiments/collect_eval.py --runs runs/t_relay runs/t_relay_dream --labels standard DREAM \
  --out results/relay_dream_cost.csv   # the two 200-iteration runs timed alone above, labelled for dream_report
python experiments/dream_report.py --curves results/relay_dream_curves.csv --cost results/relay_dream_cost.csv \
  --out results/relay_dream
