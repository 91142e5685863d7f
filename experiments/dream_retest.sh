#!/usr/bin/env bash
# Does DREAM hold up where the model works? The runs behind the README's "Does DREAM hold up?" tables, in order.
# Quick-start recipe (tiny, sr16_64, residual + v + projection, Adam 5e-4, batch 8, 1500 iterations), standard vs
# DREAM p=1 with seeds 0 1 2, and the p sweep (--dream-p 0 / 0.5 / 2, seeds 0 1 2); held-out PSNR/SSIM every 250
# iterations on the first 32 held-out faces, then a sampling-steps sweep of the final checkpoints and the cost of an
# iteration timed alone.
# Run from the repository root after `python data.py prepare ../shared/data/faces data/faces_16_64 --lr 16 --hr 64
# --val 100`. On a 2-core CPU: about 4 h of training one at a time (we ran two at a time, one thread each).
set -euo pipefail
D=data/faces_16_64
C="--task sr16_64 --data $D --model tiny --batch-size 8 --lr 5e-4 --max-iters 1500 --eval-steps 50 --overwrite
   --residual --pred v --project --eval-every 250 --eval-n 32"
for s in 0 1 2; do
  python train.py $C --seed $s --out runs/d_std_s$s
  python train.py $C --seed $s --dream --out runs/d_dream_s$s
done

# the p sweep: p = 0 / 0.5 / 2 with seeds 0 1 2; p = 1 and the standard loss are the runs above
for s in 0 1 2; do
  for p in 0 0.5 2; do
    python train.py $C --seed $s --dream --dream-p $p --out runs/d_p${p/./}_s$s
  done
done
runs=(); labels=()
for s in 0 1 2; do
  runs+=(runs/d_std_s$s runs/d_p0_s$s runs/d_p05_s$s runs/d_dream_s$s runs/d_p2_s$s)
  labels+=(standard "DREAM p=0" "DREAM p=0.5" "DREAM p=1" "DREAM p=2")
done
python experiments/collect_eval.py --all --out results/dream_p_sweep.csv --runs "${runs[@]}" --labels "${labels[@]}"

# metric vs training iteration (every evaluation of every run)
python experiments/collect_eval.py --all --out results/dream_curves.csv \
  --runs runs/d_std_s0 runs/d_std_s1 runs/d_std_s2 runs/d_dream_s0 runs/d_dream_s1 runs/d_dream_s2 \
  --labels standard standard standard "DREAM p=1" "DREAM p=1" "DREAM p=1"

# metric vs sampling steps: DDPM and DDIM at 2..200 steps, DDPM 500 and 2000 (the paper's), for every seed;
# the first 16 held-out faces, one sampling seed for every point
S="--sweep steps --data $D --n 16 --batch-size 16"
for s in 0 1 2; do
  python experiments/sweep.py $S --runs runs/d_std_s$s runs/d_dream_s$s --labels standard DREAM_p=1 \
    --steps 2 5 10 20 50 100 200 --sampler ddpm ddim --out results/dream_steps_short_s$s
done
for s in 0 1 2; do
  python experiments/sweep.py $S --runs runs/d_std_s$s runs/d_dream_s$s --labels standard DREAM_p=1 --steps 500 2000 \
    --sampler ddpm --out results/dream_steps_long_s$s
done
{ cat results/dream_steps_short_s0.csv
  tail -q -n +2 results/dream_steps_short_s1.csv results/dream_steps_short_s2.csv results/dream_steps_long_s[012].csv; } |
  sed 's/DREAM_p=1/DREAM p=1/' > results/dream_steps.csv

# the cost of an iteration, each method alone on the machine (200 iterations, the default threads)
T="--task sr16_64 --data $D --model tiny --batch-size 8 --lr 5e-4 --max-iters 200 --eval-every 200 --eval-n 2
   --eval-steps 2 --overwrite --residual --pred v --project"
python train.py $T --out runs/t_std
python train.py $T --dream --out runs/t_dream
python experiments/collect_eval.py --runs runs/t_std runs/t_dream --labels standard DREAM --out results/dream_cost.csv

python experiments/dream_report.py --curves results/dream_curves.csv --steps results/dream_steps.csv \
  --cost results/dream_cost.csv --out results/dream
python experiments/dream_report.py --curves results/dream_p_sweep.csv --cost results/dream_cost.csv --out results/dream_p

# the quick start's seed spread, standard and DREAM: all 100 held-out faces, 50 DDPM steps (each point draws its
# sampling noise from --seed 0 afresh, so splitting the runs over several calls gives the same rows)
python experiments/sweep.py --sweep steps --data $D --n 100 --batch-size 50 \
  --runs runs/d_std_s0 runs/d_std_s1 runs/d_std_s2 runs/d_dream_s0 runs/d_dream_s1 runs/d_dream_s2 \
  --labels standard standard standard DREAM_p=1 DREAM_p=1 DREAM_p=1 --steps 50 --sampler ddpm \
  --out results/quickstart_seeds
sed -i 's/DREAM_p=1/DREAM p=1/' results/quickstart_seeds.csv
