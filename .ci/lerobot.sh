#!/usr/bin/env bash
# CI job: the LeRobot 0.6 plugin (sam2_diffusion) in its own virtual environment, installed exactly as
# integration/lerobot/README.md says, then its tests (dataset recording, stock lerobot-train and
# lerobot-eval, strict reload, policy semantics) and the core tests that must hold beside LeRobot.
# LeRobot 0.6 needs Python >= 3.12 and torch < 2.12: pip takes torch 2.11 with the CUDA libraries
# (about 6 GB on first install; it runs on CPU). The venv is reused when it exists.
# Usage: .ci/lerobot.sh [all|install|test] (.ci/run builds the venv while other jobs run).
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:-all}
start=$(date +%s)
VENV=.ci/venv-lerobot
if [ "$phase" != test ] && [ ! -x "$VENV/bin/python" ]; then
    PY312=$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12 || true)
    if [ -z "$PY312" ]; then
        echo "lerobot.sh: no Python 3.12 found (tried 'PYENV_VERSION=3.12.1 pyenv which python3.12' and python3.12 on PATH)" >&2
        exit 1
    fi
    "$PY312" -m venv "$VENV"
fi
source "$VENV/bin/activate"
if [ "$phase" != test ]; then
python -m pip install -q --upgrade pip
# integration/lerobot/README.md: install (our package with its test extras, the plugin with PushT and async
# inference, and the pusht_sim robot plugin)
python -m pip install -q -e ".[dev]" "./integration/lerobot[pusht,async]" ./integration/lerobot_robot_pusht
python -m pip check
echo "lerobot venv ready in $(( $(date +%s) - start )) s"
fi
if [ "$phase" != install ]; then
python -c "import lerobot, torch, transformers, sam2_encoder; print('lerobot', lerobot.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| sam2-encoder', sam2_encoder.__version__)"
# integration/lerobot/README.md: test
OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider tests/lerobot \
    tests/test_image_encoder.py tests/test_meta_parity.py tests/test_transforms.py \
    tests/test_checkpoints.py tests/test_streaming.py tests/test_variants.py tests/test_object_tracking.py tests/test_demo_data.py
# the LeRobot guide's examples as written (its CPU try-out; the core venv runs README's)
OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider tests/test_docs.py -k "integration and lerobot"
echo "lerobot.sh $phase done in $(( $(date +%s) - start )) s"
fi
