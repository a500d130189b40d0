"""Metrics: scoring detections with each dataset's own rules, and judging results over seeds.

- KITTI AP|R40 (``kitti_ap``), with its overlaps (``kitti_iou``) and the devkit's matching
  (``kitti_match``);
- nuScenes: the results JSON (``nuscenes_results``) and the devkit's evaluation of it
  (``nuscenes``);
- Waymo AP/APH and LET-3D-AP: the box terms (``waymo_iou``), the curves (``waymo_ap``), the
  metric (``waymo_metrics``) and its run on bevkd detections (``waymo``);
- ``detections``: ego-frame detections scored with the dataset's own metric, whatever produced
  them; ``store_boxes``: a teacher store's cached boxes scored that way;
- ``verdicts``: Welch's t and Holm's correction for the reports' claims.

Nothing here builds or runs a network: the steps (``bevkd.stages``) and the CLI produce the
detections and import this package, never the other way round.
"""
