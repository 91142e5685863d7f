"""Helper for tests/test_reliability.py, run under torchrun: `ddp_run.py DUMP_DIR [train.py flags]`.

Runs train.main with the given flags, then writes DUMP_DIR/rank<R>.txt, a SHA-256 of this rank's final weights (the
test checks that all ranks hold identical parameters). loss.png is left empty (matplotlib costs seconds here).
Production code is untouched.
"""
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate  # noqa: E402
import train  # noqa: E402

rank, models, build_model = int(os.environ['RANK']), [], train.build_model


def build(*a, **k):
    models.append(build_model(*a, **k))
    return models[-1]


train.build_model = build
evaluate.plot_loss = lambda log, png: open(png, 'wb').close()  # matplotlib: seconds, not tested here
train.main(sys.argv[2:])
digest = hashlib.sha256(b''.join(p.detach().cpu().numpy().tobytes() for p in models[0].parameters())).hexdigest()
with open(os.path.join(sys.argv[1], f'rank{rank}.txt'), 'w') as f:
    f.write(digest)
