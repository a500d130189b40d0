"""The Waymo Open Dataset v2 (parquet) names bevkd reads and writes, written once.

Every name below was checked against the official ``waymo-open-dataset-tf-2-12-0`` 1.6.7
wheel (read, not installed: no TensorFlow), and ``tests/data/waymo_v2_schema.json`` holds the
official ``Component.schema()`` of each component for the tests. Citations are
``waymo_open_dataset/<file>:<line>`` in that wheel.

Layout: ``{root}/{split}/{component}/{segment}.parquet`` with ``component`` the tag of
``v2/__init__.py:84-101`` (``TAG_BY_COMPONENT``). A column is ``key.<field>`` for key fields and
``[<ComponentClass>].<field>.<subfield>`` otherwise (``v2/component.py:228-251``).
"""

from __future__ import annotations

import pyarrow as pa

# Components (tags), v2/__init__.py:84-101.
LIDAR = "lidar"
LIDAR_CALIBRATION = "lidar_calibration"
LIDAR_POSE = "lidar_pose"
VEHICLE_POSE = "vehicle_pose"
CAMERA_IMAGE = "camera_image"
CAMERA_CALIBRATION = "camera_calibration"
LIDAR_BOX = "lidar_box"

# Key columns, v2/perception/base.py.
SEGMENT = "key.segment_context_name"  # :40, string
TIMESTAMP = "key.frame_timestamp_micros"  # :50, int64
LASER = "key.laser_name"  # :65 and :80, int8 (LaserName)
CAMERA = "key.camera_name"  # :96 and :112, int8 (CameraName)
OBJECT_ID = "key.laser_object_id"  # :126, string

# LiDARComponent, v2/perception/lidar.py:55-58; RangeImage values / shape :46-47, an [H, W, 4]
# image of range, intensity, elongation, no-label-zone (:35-39).
RETURN1_VALUES = "[LiDARComponent].range_image_return1.values"
RETURN1_SHAPE = "[LiDARComponent].range_image_return1.shape"
RETURN2_VALUES = "[LiDARComponent].range_image_return2.values"
RETURN2_SHAPE = "[LiDARComponent].range_image_return2.shape"

# LiDARCalibrationComponent, v2/perception/context.py:104-113; Transform
# v2/column_types.py:113-116 (4x4, row-major, laser -> vehicle); BeamInclination :85-100
# (radians; ``values`` optional, bottom beam first: readers reverse it, see waymo.py).
LIDAR_EXTRINSIC = "[LiDARCalibrationComponent].extrinsic.transform"
BEAM_MIN = "[LiDARCalibrationComponent].beam_inclination.min"
BEAM_MAX = "[LiDARCalibrationComponent].beam_inclination.max"
BEAM_VALUES = "[LiDARCalibrationComponent].beam_inclination.values"

# LiDARPoseComponent, v2/perception/lidar.py:139-146; PoseRangeImage :130-131, an [H, W, 6]
# image of roll, pitch, yaw, x, y, z (vehicle -> world per pixel, :113-122), TOP laser only.
POSE_VALUES = "[LiDARPoseComponent].range_image_return1.values"
POSE_SHAPE = "[LiDARPoseComponent].range_image_return1.shape"

# VehiclePoseComponent, v2/perception/pose.py:24-27.
WORLD_FROM_VEHICLE = "[VehiclePoseComponent].world_from_vehicle.transform"

# CameraImageComponent, v2/perception/camera_image.py:76-101 (image: JPEG bytes, :80).
IMAGE = "[CameraImageComponent].image"
IMAGE_POSE = "[CameraImageComponent].pose.transform"
IMAGE_POSE_TIMESTAMP = "[CameraImageComponent].pose_timestamp"

# CameraCalibrationComponent, v2/perception/context.py:66-81; Intrinsic :32-53 (OpenCV
# distortion k1, k2, p1, p2, k3); extrinsic: camera (x forward, y left, z up) -> vehicle.
_CC = "[CameraCalibrationComponent]"
F_U, F_V = f"{_CC}.intrinsic.f_u", f"{_CC}.intrinsic.f_v"
C_U, C_V = f"{_CC}.intrinsic.c_u", f"{_CC}.intrinsic.c_v"
DISTORTION = tuple(f"{_CC}.intrinsic.{k}" for k in ("k1", "k2", "p1", "p2", "k3"))
CAMERA_EXTRINSIC = f"{_CC}.extrinsic.transform"
WIDTH, HEIGHT = f"{_CC}.width", f"{_CC}.height"
SHUTTER_DIRECTION = f"{_CC}.rolling_shutter_direction"

# LiDARBoxComponent, v2/perception/box.py:55-77; Box3d v2/column_types.py:120-137 (size x is
# the length, heading about +z); boxes are in the frame's vehicle frame (box.py:58-59).
_LB = "[LiDARBoxComponent]"
BOX_CENTER = tuple(f"{_LB}.box.center.{a}" for a in "xyz")
BOX_SIZE = tuple(f"{_LB}.box.size.{a}" for a in "xyz")
BOX_HEADING = f"{_LB}.box.heading"
BOX_TYPE = f"{_LB}.type"
BOX_SPEED = tuple(f"{_LB}.speed.{a}" for a in "xyz")
BOX_ACCELERATION = tuple(f"{_LB}.acceleration.{a}" for a in "xyz")
NUM_POINTS = f"{_LB}.num_lidar_points_in_box"
NUM_TOP_POINTS = f"{_LB}.num_top_lidar_points_in_box"
DIFFICULTY = f"{_LB}.difficulty_level.detection"
TRACKING_DIFFICULTY = f"{_LB}.difficulty_level.tracking"

# LaserName: v2/perception/lidar.py:191-198 and dataset.proto (dataset_pb2.py) LaserName.Name.
LASER_NAMES = {"TOP": 1, "FRONT": 2, "SIDE_LEFT": 3, "SIDE_RIGHT": 4, "REAR": 5}
# CameraName: v2/perception/camera_image.py:104-111 and dataset.proto CameraName.Name (which
# also has REAR_LEFT 6, REAR 7, REAR_RIGHT 8, never in the perception v2 release).
CAMERA_NAMES = {"FRONT": 1, "FRONT_LEFT": 2, "FRONT_RIGHT": 3, "SIDE_LEFT": 4, "SIDE_RIGHT": 5}
# BoxType: v2/perception/box.py:31-37 and label.proto (label_pb2.py) Label.Type.
BOX_TYPES = {"TYPE_VEHICLE": 1, "TYPE_PEDESTRIAN": 2, "TYPE_SIGN": 3, "TYPE_CYCLIST": 4}
# RollingShutterReadOutDirection: v2/perception/context.py:56-62.
GLOBAL_SHUTTER = 5
# DifficultyLevelType: v2/perception/box.py:40-44.
LEVEL_1, LEVEL_2 = 1, 2

_TRANSFORM = pa.list_(pa.float64(), 16)  # v2/column_types.py:116
_RANGE_VALUES = pa.list_(pa.float32())  # v2/perception/lidar.py:46
_RANGE_SHAPE = pa.list_(pa.int32(), 3)  # v2/perception/lidar.py:47

# The columns bevkd reads or writes per component, with their official Arrow types
# (tests/data/waymo_v2_schema.json has the full official schemas).
COLUMNS: dict[str, dict[str, pa.DataType]] = {
    LIDAR: {
        SEGMENT: pa.string(),
        TIMESTAMP: pa.int64(),
        LASER: pa.int8(),
        RETURN1_VALUES: _RANGE_VALUES,
        RETURN1_SHAPE: _RANGE_SHAPE,
        RETURN2_VALUES: _RANGE_VALUES,
        RETURN2_SHAPE: _RANGE_SHAPE,
    },
    LIDAR_CALIBRATION: {
        SEGMENT: pa.string(),
        LASER: pa.int8(),
        LIDAR_EXTRINSIC: _TRANSFORM,
        BEAM_MIN: pa.float64(),
        BEAM_MAX: pa.float64(),
        BEAM_VALUES: pa.list_(pa.float64()),
    },
    LIDAR_POSE: {
        SEGMENT: pa.string(),
        TIMESTAMP: pa.int64(),
        LASER: pa.int8(),
        POSE_VALUES: _RANGE_VALUES,
        POSE_SHAPE: _RANGE_SHAPE,
    },
    VEHICLE_POSE: {SEGMENT: pa.string(), TIMESTAMP: pa.int64(), WORLD_FROM_VEHICLE: _TRANSFORM},
    CAMERA_IMAGE: {
        SEGMENT: pa.string(),
        TIMESTAMP: pa.int64(),
        CAMERA: pa.int8(),
        IMAGE: pa.binary(),
        IMAGE_POSE: _TRANSFORM,
        IMAGE_POSE_TIMESTAMP: pa.float64(),
    },
    CAMERA_CALIBRATION: {
        SEGMENT: pa.string(),
        CAMERA: pa.int8(),
        **{name: pa.float64() for name in (F_U, F_V, C_U, C_V, *DISTORTION)},
        CAMERA_EXTRINSIC: _TRANSFORM,
        WIDTH: pa.int32(),
        HEIGHT: pa.int32(),
        SHUTTER_DIRECTION: pa.int8(),
    },
    LIDAR_BOX: {
        SEGMENT: pa.string(),
        TIMESTAMP: pa.int64(),
        OBJECT_ID: pa.string(),
        **{name: pa.float64() for name in (*BOX_CENTER, *BOX_SIZE, BOX_HEADING)},
        BOX_TYPE: pa.int8(),
        NUM_POINTS: pa.int64(),
        NUM_TOP_POINTS: pa.int64(),
        **{name: pa.float64() for name in (*BOX_SPEED, *BOX_ACCELERATION)},
        DIFFICULTY: pa.int8(),
        TRACKING_DIFFICULTY: pa.int8(),
    },
}


def schema(component: str) -> pa.Schema:
    """The Arrow schema of the columns of ``component`` that bevkd writes."""
    return pa.schema(list(COLUMNS[component].items()))
