"""Figures a person reads (matplotlib, Agg backend, PNG): detections in BEV and on the camera
images (``draw``), loss curves of a training log (``plots``)."""
