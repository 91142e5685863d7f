"""Helper for tests/test_reliability.py, run under torchrun: `ddp_run.py DUMP_DIR [train.py flags]`.

Runs train.main with the given flags (DDP_RUN_NAN_FROM='STEP,RANK' injects a NaN loss; DDP_RUN_RNG=1 writes
DUMP_DIR/rank<R>_rng.txt, a SHA-256 of the torch RNG state at each loss, one per line), then writes DUMP_DIR/rank<R>.txt, a SHA-256 of this rank's final weights (the
test checks that all ranks hold identical parameters). loss.png is left empty (matplotlib costs seconds here).
Production code is untouched.
"""
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import train  # noqa: E402

rank, models, build_model = int(os.environ['RANK']), [], train.build_model


def build(*a, **k):
    models.append(build_model(*a, **k))
    return models[-1]


train.build_model = build
if os.environ.get('DDP_RUN_NAN_FROM'):  # 'STEP,RANK': that rank's loss is NaN from training step STEP on
    nan_step, nan_rank = map(int, os.environ['DDP_RUN_NAN_FROM'].split(','))
    calls, compute_loss = [0], train.compute_loss

    def nan_loss(*a, **k):
        calls[0] += 1
        loss = compute_loss(*a, **k)
        return loss * float('nan') if rank == nan_rank and calls[0] >= nan_step else loss

    train.compute_loss = nan_loss
if os.environ.get('DDP_RUN_RNG'):  # the noise this rank is about to draw, as the digest of its RNG state
    rng_log = open(os.path.join(sys.argv[1], f'rank{rank}_rng.txt'), 'w')
    loss_before_rng = train.compute_loss

    def recorded_loss(*a, **k):
        rng_log.write(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest() + '\n')
        rng_log.flush()
        return loss_before_rng(*a, **k)

    train.compute_loss = recorded_loss
train.plot_loss = lambda log, png: open(png, 'wb').close()  # matplotlib: seconds, not tested here
train.main(sys.argv[2:])
digest = hashlib.sha256(b''.join(p.detach().cpu().numpy().tobytes() for p in models[0].parameters())).hexdigest()
with open(os.path.join(sys.argv[1], f'rank{rank}.txt'), 'w') as f:
    f.write(digest)
