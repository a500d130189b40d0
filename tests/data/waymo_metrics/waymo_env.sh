#!/usr/bin/env bash
# The separate environment in which tests/data/waymo_metrics/make_official_reference.py runs the
# official Waymo Open Dataset metrics op (C++, waymo_open_dataset/metrics/ops/metrics_ops.so) to
# make reference.json. waymo-open-dataset is never a dependency of bevkd: this venv lives
# outside the project (default /work/waymoenv) and only the JSON fixture it writes is committed.
#
#   bash tests/data/waymo_metrics/waymo_env.sh [VENV]
#
# waymo-open-dataset-tf-2-12-0 1.6.7 is a py3-none manylinux wheel (the op is built against
# TensorFlow 2.13, whatever its name says). Its metadata pins ~20 packages (jax, dask, pandas,
# visu3d, ...) that the metrics op does not import, so it goes in with --no-deps beside
# TensorFlow 2.13 and the two small packages the metrics modules import.
set -euo pipefail
VENV=${1:-/work/waymoenv}
python3.11 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "tensorflow-cpu==2.13.1" "numpy==1.24.3" "protobuf>=3.20.3,<5" immutabledict six
$PIP install -q --no-deps "waymo-open-dataset-tf-2-12-0==1.6.7"
$VENV/bin/python -c "
import tensorflow as tf
from waymo_open_dataset.metrics.ops import py_metrics_ops
from waymo_open_dataset.protos import metrics_pb2
import importlib.metadata as md
print('tensorflow', tf.__version__, 'waymo-open-dataset', md.version('waymo-open-dataset-tf-2-12-0'))
print('LET in Config:', 'let_metric_config' in metrics_pb2.Config.DESCRIPTOR.fields_by_name)
"
