#!/usr/bin/env bash
# CI for the Diffusion Policy integration: a venv built with exactly the pip lines of
# integration/diffusion_policy/README.md (tests/dp_upstream/test_guide.py checks that every
# `pip install` line below is in the guide and vice versa), then the tests that run upstream DP's
# own train.py. DP's source: $SAM2_DP_SRC, else ../shared/third_party/diffusion_policy.
# Nothing may be skipped here (SAM2_DP_REQUIRED=1 turns a missing piece into a failure).
# Usage: .ci/dp.sh [all|install|test] (.ci/run builds the venv while the core tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:-all}
start=$(date +%s)
if [ "$phase" != test ]; then
"${PYTHON:-python3.11}" -m venv .ci/venv-dp
fi
source .ci/venv-dp/bin/activate
export PIP_QUIET=1 PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$phase" != test ]; then

# guide, step 2: torch + torchvision first (PyPI's CUDA wheels; they run on CPU)
pip install torch==2.11.0 torchvision==0.26.0
pip install -e ".[dp]"
pip install "zarr==2.18.7" "numcodecs<0.16" diffusers numba dill pandas einops "wandb<0.25"
# guide: real-robot dataset extras
pip install opencv-python-headless av imagecodecs threadpoolctl
# guide: pusht simulator extras
pip install "pip<24.1" "setuptools==65.5.0" "wheel<0.40"
pip install --no-build-isolation "gym==0.21.0"
pip install pygame "pymunk==6.2.1" shapely scikit-image opencv-python-headless av
python -m pip install pytest pyyaml  # CI only: the test runner
echo "dp venv ready in $(( $(date +%s) - start )) s: $(du -sh .ci/venv-dp | cut -f1)"
fi

if [ "$phase" != install ]; then
SAM2_DP_REQUIRED=1 OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider tests/dp_upstream
echo "dp.sh $phase done in $(( $(date +%s) - start )) s"
fi
