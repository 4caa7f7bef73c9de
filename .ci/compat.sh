#!/usr/bin/env bash
# CI job: the core tests against the OLDEST transformers release pyproject.toml admits (5.4.0, what
# LeRobot 0.6 allows; the main job runs the newest). A small venv: the local CPU torch wheel, the
# core dependencies only (no [dp] extra: the core must not need Hydra or zarr), and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
python3 -m venv .ci/venv-compat
source .ci/venv-compat/bin/activate
export PIP_QUIET=1 PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install torch==2.13.0
python -m pip install "transformers==5.4.0" pytest pillow
python -m pip install -e .
python -c "import transformers; assert transformers.__version__ == '5.4.0', transformers.__version__"
OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider tests/test_image_encoder.py tests/test_meta_parity.py \
    tests/test_transforms.py tests/test_variants.py tests/test_checkpoints.py tests/test_streaming.py tests/test_layout.py \
    tests/test_object_tokens.py tests/test_frame_memo.py tests/test_numerics.py tests/test_deferred_checkpoint.py \
    tests/test_object_tracking.py tests/test_obs_tracking.py
echo "compat.sh (transformers 5.4.0) done in $(( $(date +%s) - start )) s"
