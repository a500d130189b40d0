"""The road a scene happens on: a straight line or a constant-curvature arc in the global
x-y plane (the world is flat, ground at z = 0), with road coordinates ``s`` (metres along
the road) and ``d`` (metres to the left of its centre line).

Cross-section (right-hand traffic, the ego drives in the +s direction on the right side)::

    d:  -13.5  -10    -7.5      -3.5      0      3.5      7.5   10    13.5
        |sidewalk|parking| lane 2 | lane 1 | lane 1 | lane 2 |parking|sidewalk| buildings
                 (+s traffic on d < 0)      (oncoming traffic on d > 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LANE_WIDTH = 3.5
LANES = 2  # per direction
PARKING_WIDTH = 2.5
SIDEWALK_WIDTH = 3.5
CARRIAGEWAY = LANES * LANE_WIDTH  # centre line to the parking lane
ROAD_EDGE = CARRIAGEWAY + PARKING_WIDTH  # centre line to the curb
SIDEWALK_EDGE = ROAD_EDGE + SIDEWALK_WIDTH  # curb to the building line


def lane_centre(lane: int) -> float:
    """``d`` of a lane's centre: lanes 1, 2 run along +s (d < 0), -1, -2 against it."""
    side = -1.0 if lane > 0 else 1.0
    return side * (abs(lane) - 0.5) * LANE_WIDTH


@dataclass(frozen=True)
class Road:
    """``origin`` (x, y) and ``heading`` (rad) of the road at ``s = 0``; ``curvature`` in 1/m
    (0: straight; > 0 turns left)."""

    origin: tuple[float, float]
    heading: float
    curvature: float

    def _normal(self) -> np.ndarray:
        return np.array([-np.sin(self.heading), np.cos(self.heading)])

    def to_global(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates (any shape) -> (xy (..., 2), heading (...)) in the global frame."""
        s = np.asarray(s, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        s, d = np.broadcast_arrays(s, d)
        origin = np.asarray(self.origin)
        normal = self._normal()
        if self.curvature == 0.0:
            tangent = np.array([np.cos(self.heading), np.sin(self.heading)])
            xy = origin + s[..., None] * tangent + d[..., None] * normal
            return xy, np.full(s.shape, self.heading)
        k = self.curvature
        centre = origin + normal / k
        phi = k * s
        # Rotate -normal about the centre by phi; the lateral offset shortens the radius.
        c, sn = np.cos(phi), np.sin(phi)
        ux = -(c * normal[0] - sn * normal[1])
        uy = -(sn * normal[0] + c * normal[1])
        radius = 1.0 / k - d
        xy = centre + np.stack([ux * radius, uy * radius], axis=-1)
        return xy, self.heading + phi

    def to_road(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global ``(..., 2)`` points -> road coordinates (s, d), each of shape ``(...)``."""
        xy = np.asarray(xy, dtype=np.float64)
        origin = np.asarray(self.origin)
        normal = self._normal()
        rel = xy - origin
        if self.curvature == 0.0:
            tangent = np.array([np.cos(self.heading), np.sin(self.heading)])
            return rel @ tangent, rel @ normal
        k = self.curvature
        sign = np.sign(k)
        v = rel - normal / k
        r = np.sqrt(v[..., 0] ** 2 + v[..., 1] ** 2)
        d = 1.0 / k - sign * r
        # u = sign * v / r is -normal rotated by k*s.
        ux, uy = sign * v[..., 0], sign * v[..., 1]
        cross = -normal[0] * uy + normal[1] * ux
        dot = -normal[0] * ux - normal[1] * uy
        return np.arctan2(cross, dot) / k, d
