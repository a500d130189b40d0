#!/usr/bin/env bash
# The separate environment in which tests/data/foreign/make_mmdet3d_reference.py runs mmdet3d's
# own CenterPoint to make the reference fixture. mmdet3d is never a dependency of bevkd: this
# venv lives outside the project (default /work/mmenv) and only the fixture it writes is
# committed.
#
#   bash tests/data/foreign/mmdet3d_env.sh [VENV]
#
# mmcv 2.1.0 has no CPU wheel on PyPI for this torch, so it is built from its sdist with its
# CPU ops (MMCV_WITH_OPS=1): about 10 minutes on 2 cores. mmengine, mmdet and mmdet3d then
# install with --no-deps (their pins would pull another torch), beside the few packages their
# CenterPoint import path needs.
set -euo pipefail
VENV=${1:-/work/mmenv}
WHEELS=${WHEELS:-$VENV.wheels}
python3.11 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q torch==2.13.0 wheel ninja "numpy<2"
# mmcv's setup.py needs an old setuptools; torch's metadata asks for >=77 but runs with it.
$PIP install -q --no-deps "setuptools<70"
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
  MMCV_WITH_OPS=1 MAX_JOBS=2 $PIP wheel --no-build-isolation --no-deps mmcv==2.1.0 -w "$WHEELS"
fi
$PIP install -q --no-deps "$WHEELS"/mmcv-2.1.0-*.whl
# register_all_modules() imports mmdet3d's datasets and metrics too, so the two devkits come in
# (without their pins) along with what those modules import at the top.
$PIP install -q --no-deps mmengine==0.10.7 mmdet==3.3.0 mmdet3d==1.4.0 \
  lyft_dataset_sdk==0.0.8 nuscenes-devkit==1.2.0
$PIP install -q pyyaml addict yapf six termcolor rich "numba==0.60.*" opencv-python-headless \
  shapely pyquaternion scipy terminaltables pycocotools spconv==2.3.8 "numpy<2" \
  Pillow matplotlib tqdm pandas scikit-learn cachetools trimesh
$VENV/bin/python -c "import mmcv, mmdet3d, spconv; from mmcv.ops import nms; print('mmcv', mmcv.__version__, 'mmdet3d', mmdet3d.__version__, 'spconv', spconv.__version__)"
$VENV/bin/python -c "from mmdet3d.utils import register_all_modules; register_all_modules(); print('mmdet3d modules registered')"
