#!/usr/bin/env bash
# docs/metrics.md: runs `evaluate.py --kid --fid` through torchmetrics' default feature network, torch-fidelity's
# Inception-v3, the path a user with torch-fidelity installed gets, which the tests cannot take here: torch-fidelity imports
# torchvision, and PyPI's torchvision does not import beside the pinned torch==2.13.0 CPU build. So it runs in a
# separate virtual environment that has a torch / torchvision pair that does import (on x86_64 Linux here:
# torch 2.14.1 + torchvision 0.29.1, a CUDA build of several GB; the project's own environment is untouched):
#
#   python -m venv ../venv_tv
#   ../venv_tv/bin/pip install torch==2.14.1 torchvision==0.29.1 torch-fidelity torchmetrics numpy pillow tqdm
#   bash experiments/metrics.sh ../venv_tv/bin/python PRED GT [PRED2] > results/metrics/inception_path_check.txt
#
# Two checks, each in a throw-away TORCH_HOME (the user's real weights cache is never read or written):
#  1. no cached weights and no network: evaluate.py prints one line naming what is missing and where the weights go,
#     the exit code is 0 and the other metrics still print;
#  2. a stand-in weights file in that cache -- torch-fidelity's own architecture, random values, saved under the name
#     torch hub looks for -- so the whole path runs offline: cache hit, uint8 images resized by torch-fidelity,
#     2048-d features, torchmetrics' KID and FID. Its numbers mean nothing (random features); what it shows is that
#     the path runs end to end and that a cached file is used without a download.
set -euo pipefail
PY=${1:?python of the venv with torch-fidelity}; PRED=${2:?folder of samples}; GT=${3:?folder of real images}
# optional 4th argument: a second folder of samples, scored against GT with the same stand-in network
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$PY" -c "import torch, torchvision, torch_fidelity, torchmetrics
print('versions: torch', torch.__version__, 'torchvision', torchvision.__version__, 'torch-fidelity',
      torch_fidelity.__version__, 'torchmetrics', torchmetrics.__version__)"

echo "== 1. no cached Inception weights, no network"
TORCH_HOME=$T "$PY" evaluate.py --pred "$PRED" --gt "$GT" --kid --fid --kid-subset 50 2>&1 | grep -v '^Downloading'
echo "exit code: ${PIPESTATUS[0]}"

echo "== 2. stand-in weights (random values, real architecture) in the cache"
TORCH_HOME=$T "$PY" - <<'EOF'
import os
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fe
name = os.path.basename(fe.URL_INCEPTION_V3)
# build the architecture without fetching anything: the URL loader returns nothing, loading it is skipped once
fe.load_state_dict_from_url = lambda *a, **k: {}
load = fe.FeatureExtractorInceptionV3.load_state_dict
fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: None
net = fe.FeatureExtractorInceptionV3('inception-v3-compat', ['2048'])
fe.FeatureExtractorInceptionV3.load_state_dict = load
for m in net.modules():  # PyTorch's default conv init shrinks the signal ~6x per layer: features would be all ~0
    if isinstance(m, torch.nn.Conv2d):
        torch.nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
path = os.path.join(torch.hub.get_dir(), 'checkpoints', name)
os.makedirs(os.path.dirname(path), exist_ok=True)
torch.save(net.state_dict(), path)
print(f'stand-in weights: {len(net.state_dict())} tensors saved as {name}')
EOF
for pred in "$PRED" "${4:-}"; do
  [ -n "$pred" ] || continue
  echo "-- --pred $pred"
  TORCH_HOME=$T "$PY" evaluate.py --pred "$pred" --gt "$GT" --kid --fid --kid-subset 25 --json 2>&1 \
    | grep -v '^Downloading'
  echo "exit code: ${PIPESTATUS[0]}"
done
