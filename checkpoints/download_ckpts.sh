#!/usr/bin/env bash
# Download Meta's eight released SAM 2 / SAM 2.1 checkpoints into this folder and verify them.
#
# Meta publishes no sha256 for these files, so the first download pins each file's sha256 in
# checkpoints/SHA256SUMS (commit that file to share the pin); every later run, and every
# re-download, is verified against it. A partial download resumes where it stopped.
#
# Usage: bash checkpoints/download_ckpts.sh [VARIANT ...]   (default: all eight)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v sam2-encoder >/dev/null 2>&1; then
    echo "sam2-encoder is not installed: run pip install -e . in the repository first" >&2
    exit 1
fi
if [ "$#" -eq 0 ]; then
    exec sam2-encoder download --all --dir "$here"
fi
exec sam2-encoder download "$@" --dir "$here"
