"""A synthetic driving world written in the real nuScenes, KITTI and Waymo v2 on-disk formats.

Layers, one module each: the world model (``world``, ``placement``, ``road``, ``catalog``),
the sensors (``raycast``, ``lidar``, ``camera``, ``appearance``, ``snapshot``) and the format
writers (``nuscenes_*``, ``kitti_*``, ``waymo_*``). See README.md in this folder.
"""

from bevkd.datasets.synthetic.generate import FORMATS, generate
from bevkd.datasets.synthetic.kitti_export import render_kitti_instance_mask
from bevkd.datasets.synthetic.nuscenes_export import render_instance_mask
from bevkd.datasets.synthetic.presets import PRESETS, Preset, get_preset

__all__ = [
    "FORMATS",
    "PRESETS",
    "Preset",
    "generate",
    "get_preset",
    "render_instance_mask",
    "render_kitti_instance_mask",
]
