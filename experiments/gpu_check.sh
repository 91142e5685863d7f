#!/usr/bin/env bash
# The GPU check (issue 30, item 14): everything this project wants to know from a lent GPU, in under 10 minutes on
# one H100 / H200, written to results/speed/gpu_<name>.json (docs/speed.md tabulates it).
#
#   bash experiments/gpu_check.sh              # on the GPU machine, from the repository root
#   bash experiments/gpu_check.sh --dry-run    # the same steps on the CPU with every size shrunk (tests/test_gpu_check.py)
#
# Steps, in order of value (each with its own time limit; a step that would pass the 9.5-minute deadline is skipped
# and recorded as such, so the script always ends in time):
#   1. bench.py --model paper --batch-size B --iters 10 --budget 10 --no-probe --json, B = 4, 16, 64, compile off
#      (img/s, MFU of the matmul peak of the chosen dtype (bf16 on a GPU with native bf16), peak memory, DREAM/std)
#   2. a 200-iteration `train.py --task sr16_128 --dream` (the paper network, batch 4) on faces the script makes:
#      its img/s, loss, the held-out evaluation at step 200
#   3. a relay 64 -> 256 stage-2 training run (20 iterations, the paper network, RDM's CelebA-HQ blur settings)
#   4. `python -m torch.distributed.run (torchrun) --standalone --nproc_per_node 1 train.py ...` (nccl on a GPU, gloo in the dry run): DDP starts
#   5. step 1 with --compile (torch.compile: minutes to compile, so last)
# Environment: GPU_CHECK_OUT (folder of the JSON, default results/speed), GPU_CHECK_NAME (the <name>; default the
# GPU's name from torch, lower case, non-alphanumerics as '_'; the dry run: 'dryrun').
set -u
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY=1
fi
START=$(date +%s)
DEADLINE=570                                       # seconds: no step starts that could end after this
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
OUT_DIR=${GPU_CHECK_OUT:-results/speed}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export MPLBACKEND=Agg

if [ $DRY = 1 ]; then
    DEVICE=cpu
    BENCH="--model tiny --res 16 --iters 1 --budget 0 --no-probe --sample-steps 2 --device cpu"
    BATCHES="2"
    SR_TASK=sr4_16; SR_RES=16; RELAY_TASK=relay4_16; RELAY_RES=16; MODEL=tiny
    TRAIN_ITERS=4; RELAY_ITERS=2; DDP_ITERS=2; EVAL_STEPS=2; N_IMAGES=12
    LIMIT_BENCH=120; LIMIT_TRAIN=120; LIMIT_COMPILE=120
else
    DEVICE=cuda
    BENCH="--model paper --iters 10 --budget 10 --no-probe --device cuda"
    BATCHES="4 16 64"
    SR_TASK=sr16_128; SR_RES=128; RELAY_TASK=relay64_256; RELAY_RES=256; MODEL=paper
    TRAIN_ITERS=200; RELAY_ITERS=20; DDP_ITERS=20; EVAL_STEPS=20; N_IMAGES=40
    LIMIT_BENCH=90; LIMIT_TRAIN=150; LIMIT_COMPILE=200
fi

# step NAME LIMIT COMMAND...: run it with its own time limit (never past the deadline), log to $WORK/NAME.log,
# record name, exit status and wall seconds in $WORK/steps.tsv (rc 124: timed out; 'skipped': no time left)
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - ($(date +%s) - START)))
    if [ "$left" -lt 20 ]; then
        printf '%s\tskipped\t0\n' "$name" >> "$WORK/steps.tsv"
        echo "== $name: skipped (no time left)"
        return
    fi
    if [ "$limit" -gt "$left" ]; then
        limit=$left
    fi
    echo "== $name (limit ${limit} s)"
    local t0=$(date +%s.%N)
    timeout --kill-after 10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    local t1=$(date +%s.%N)
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(python -c "print(round($t1 - $t0, 1))")" >> "$WORK/steps.tsv"
    tail -n 3 "$WORK/$name.log"
}

# data: smooth random faces-sized images the script makes (no download), SR pairs + a 256-pixel folder
python - "$WORK" "$N_IMAGES" "$SR_RES" "$RELAY_RES" <<'EOF'
import os, sys
import numpy as np
from PIL import Image
work, n, sr_res, relay_res = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = np.random.default_rng(0)
for name, res in (('src', sr_res), ('src256', relay_res)):
    os.makedirs(os.path.join(work, name))
    for i in range(n):
        small = Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        small.resize((res, res), Image.BICUBIC).save(os.path.join(work, name, f'{i:05d}.png'))
EOF
LR_RES=$((SR_RES / 4))
[ $DRY = 1 ] || LR_RES=16
python data.py prepare "$WORK/src" "$WORK/pairs" --lr $LR_RES --hr $SR_RES --val 8 > "$WORK/prepare.log" 2>&1 \
    || { cat "$WORK/prepare.log"; exit 1; }

# 1. bench, compile off
for B in $BATCHES; do
    step "bench_b${B}" $LIMIT_BENCH python bench.py $BENCH --batch-size "$B" --json
done

# 2. 200 iterations of sr16_128 --dream (the paper network in the real run)
TRAIN="--model $MODEL --device $DEVICE --batch-size 4 --eval-n 4 --eval-steps $EVAL_STEPS --log-every 10"
step train_sr $LIMIT_TRAIN python train.py --task $SR_TASK --dream --data "$WORK/pairs" --out "$WORK/train_sr" \
    $TRAIN --max-iters $TRAIN_ITERS --eval-every $TRAIN_ITERS

# 3. relay 64 -> 256, stage 2 with RDM's CelebA-HQ settings
step train_relay $LIMIT_TRAIN python train.py --task $RELAY_TASK --data "$WORK/src256" --holdout 4 \
    --out "$WORK/train_relay" $TRAIN --max-iters $RELAY_ITERS --eval-every $RELAY_ITERS \
    --blur-sigma-max 2.0 --prob-length 0.89

# 4. a one-GPU torchrun start (nccl on CUDA; gloo on the CPU)
step torchrun $LIMIT_TRAIN python -m torch.distributed.run --standalone --nproc_per_node 1 train.py --task $SR_TASK \
    --data "$WORK/pairs" --out "$WORK/torchrun" $TRAIN --max-iters $DDP_ITERS --eval-every $DDP_ITERS

# 5. bench, compile on (the dry run makes torch.compile a no-op: the flag's path, without a C++ compiler)
for B in $BATCHES; do
    if [ $DRY = 1 ]; then
        step "bench_b${B}_compile" $LIMIT_COMPILE env TORCHDYNAMO_DISABLE=1 python bench.py $BENCH --batch-size "$B" \
            --compile --json
    else
        step "bench_b${B}_compile" $LIMIT_COMPILE python bench.py $BENCH --batch-size "$B" --compile --json
    fi
done

# the JSON: every step's status and time, bench's JSON line, the training runs' last log rows and evaluation
python - "$WORK" "$OUT_DIR" "$DRY" "$(($(date +%s) - START))" <<'EOF'
import json, os, re, sys
import torch
work, out_dir, dry, total_s = sys.argv[1], sys.argv[2], sys.argv[3] == '1', int(sys.argv[4])
if dry:
    device_name = 'dry run (CPU)'
elif torch.cuda.is_available():
    device_name = torch.cuda.get_device_name(0)
else:
    device_name = 'no CUDA device'
name = os.environ.get('GPU_CHECK_NAME') or ('dryrun' if dry else re.sub(r'[^a-z0-9]+', '_', device_name.lower()).strip('_'))
result = dict(device_name=device_name, torch=torch.__version__, dry_run=dry, total_s=total_s, steps={})
for line in open(os.path.join(work, 'steps.tsv')):
    step, rc, seconds = line.rstrip('\n').split('\t')
    entry = dict(status='skipped' if rc == 'skipped' else ('ok' if rc == '0' else ('timeout' if rc in ('124', '137') else 'failed')),
                 rc=None if rc == 'skipped' else int(rc), wall_s=float(seconds))
    log = os.path.join(work, step + '.log')
    text = open(log).read() if os.path.exists(log) else ''
    if step.startswith('bench'):
        lines = [l for l in text.splitlines() if l.startswith('{')]
        if lines:
            entry['bench'] = json.loads(lines[-1])
    else:
        rows = []
        run_log = os.path.join(work, step, 'log.jsonl')
        if os.path.exists(run_log):
            rows = [json.loads(l) for l in open(run_log)]
        steps_rows = [r for r in rows if 'loss' in r]
        if steps_rows:
            entry['last_step'] = steps_rows[-1]
            rates = [r['img_s'] for r in steps_rows if 'img_s' in r]
            entry['img_s_last'] = rates[-1] if rates else None
        entry['eval'] = [r for r in rows if r.get('eval')]
        entry['ckpt'] = os.path.exists(os.path.join(work, step, 'ckpt.pt'))
        entry['ddp'] = 'DDP world size' in text
    if entry['status'] != 'ok':
        entry['log_tail'] = text[-2000:]
    result['steps'][step] = entry
os.makedirs(out_dir, exist_ok=True)
path = os.path.join(out_dir, f'gpu_{name}.json')
with open(path, 'w') as f:
    json.dump(result, f, indent=1)
print(f'wrote {path} ({total_s} s)')
EOF
