"""Pinhole camera and analytic ray-primitive intersections for the CLEVR-like renderer.

Every function works on whole arrays of rays at once (no per-pixel Python loop). Rays are
passed as separate components ``(ox, oy, oz, dx, dy, dz)``, each an array of shape ``(P,)``
(contiguous 1-D arrays are markedly faster in NumPy than strided columns of a ``(P, 3)``
array) or, for a shared origin, a Python float. Directions are unit vectors, so the returned ray parameter ``t`` is a distance.
Intersections take rays in the primitive's *local* frame (centred at the origin, axes aligned
with the primitive); :func:`to_local` moves world rays there. A miss is ``t = inf``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

# Hits closer than this along a ray are ignored, so that secondary rays (shadow, reflection)
# starting on a surface do not re-hit that surface through rounding.
T_EPS = 1e-4

# Origin components may be Python floats (a shared origin) or arrays; directions are arrays.
Vec3 = tuple[np.ndarray, np.ndarray, np.ndarray]  # x, y, z components, each (P,)
Rays = tuple[
    "float | np.ndarray",
    "float | np.ndarray",
    "float | np.ndarray",
    np.ndarray,
    np.ndarray,
    np.ndarray,
]


@dataclass(frozen=True)
class Camera:
    """A pinhole camera that looks from ``position`` at ``look_at``, horizon kept level.

    The defaults are CLEVR's (Blender's default camera): a 35 mm lens on a 32 mm wide sensor
    (horizontal field of view 2 * atan(16 / 35) = 49.1 degrees) with the sensor width fitted
    to the image width, so pixels are square and ``f_px = width * 35 / 32``.

    Attributes:
        position: (3,) camera centre in world units (z up).
        look_at: (3,) point the optical axis passes through.
        focal_length: lens focal length in mm.
        sensor_width: sensor width in mm, mapped to the image width.
    """

    position: tuple[float, float, float] = (7.48113, -6.50764, 5.34367)
    look_at: tuple[float, float, float] = (0.0, 0.0, 0.0)
    focal_length: float = 35.0
    sensor_width: float = 32.0

    def basis(self) -> np.ndarray:
        """Camera axes in world coordinates (computed once per camera; do not modify).

        Returns:
            (3, 3) float64 array with rows ``right``, ``up``, ``forward`` (unit vectors, image
            x to the right, image y up, optical axis forward). A camera looking straight down
            uses world +y as its up direction.
        """
        return self._basis

    @cached_property
    def _basis(self) -> np.ndarray:
        # cached_property writes the instance __dict__ directly, so it works on a frozen
        # dataclass; the camera is immutable, so the cache never goes stale.
        forward = np.asarray(self.look_at, np.float64) - np.asarray(self.position, np.float64)
        forward /= np.linalg.norm(forward)
        world_up = np.array([0.0, 0.0, 1.0])
        # Looking (almost) straight up or down leaves the horizon undefined: pick +y as up.
        if abs(forward @ world_up) > 1.0 - 1e-9:
            world_up = np.array([0.0, 1.0, 0.0])
        right = np.cross(forward, world_up)
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        return np.stack([right, up, forward])

    def focal_pixels(self, width: int) -> float:
        """Focal length in pixels for an image ``width`` pixels wide (square pixels)."""
        return width * self.focal_length / self.sensor_width

    def rays(self, rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> Rays:
        """Primary rays through continuous image positions.

        Pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``; its centre is ``(i + 0.5, j + 0.5)``.

        Args:
            rows: (P,) continuous row coordinates (0 = top edge of the image).
            cols: (P,) continuous column coordinates (0 = left edge).
            height: image height in pixels.
            width: image width in pixels.

        Returns:
            ``(ox, oy, oz, dx, dy, dz)``: the camera centre as three floats, then (P,) float32
            unit directions.
        """
        right, up, forward = (row.tolist() for row in self.basis())
        f = self.focal_pixels(width)
        # float32 throughout (Python-float coefficients keep NumPy from promoting).
        u = (np.asarray(cols, np.float32) - width / 2.0) * (1.0 / f)
        v = (height / 2.0 - np.asarray(rows, np.float32)) * (1.0 / f)
        inv_norm = 1.0 / np.sqrt(u * u + v * v + 1.0)
        dirs = [(u * right[k] + v * up[k] + forward[k]) * inv_norm for k in range(3)]
        # The shared origin stays three Python floats: every later formula broadcasts, and
        # scalar terms (e.g. |o|^2 - r^2) then cost nothing per ray.
        return (*(float(c) for c in self.position), *dirs)

    def project(self, points: np.ndarray, height: int, width: int) -> np.ndarray:
        """Project world points to continuous image coordinates.

        Args:
            points: (..., 3) world coordinates.
            height: image height in pixels.
            width: image width in pixels.

        Returns:
            (..., 3) float64 array ``(x, y, depth)``: column and row in pixels (pixel centres
            at half-integers, as in :meth:`rays`) and the depth along the optical axis.
        """
        basis = self.basis()
        local = (np.asarray(points, np.float64) - np.asarray(self.position)) @ basis.T
        f = self.focal_pixels(width)
        depth = local[..., 2]
        x = width / 2.0 + f * local[..., 0] / depth
        y = height / 2.0 - f * local[..., 1] / depth
        return np.stack([x, y, depth], axis=-1)


def rotation_z(degrees: float) -> np.ndarray:
    """Rotation matrix about the world z axis.

    Args:
        degrees: angle, counter-clockwise seen from above.

    Returns:
        (3, 3) float64 matrix mapping local to world coordinates.
    """
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def to_local(rays: Rays, center: np.ndarray, rot: np.ndarray | None) -> Rays:
    """Express world rays in a primitive's local frame.

    Args:
        rays: world rays ``(ox, oy, oz, dx, dy, dz)``, each (P,).
        center: (3,) primitive centre in world coordinates.
        rot: (3, 3) local-to-world rotation, or None for a rotation-free primitive (sphere,
            cylinder about its own axis) to skip the matrix products.

    Returns:
        The same rays in local coordinates, each (P,).
    """
    ox, oy, oz, dx, dy, dz = rays
    # Python floats, not NumPy float64 scalars: those would promote float32 rays to float64.
    cx, cy, cz = (float(v) for v in center)
    px, py, pz = ox - cx, oy - cy, oz - cz
    if rot is None:
        return px, py, pz, dx, dy, dz
    # Rotations are about z only: the inverse (transpose) mixes x and y.
    c, s = float(rot[0, 0]), float(rot[1, 0])
    return (c * px + s * py, c * py - s * px, pz, c * dx + s * dy, c * dy - s * dx, dz)


def intersect_sphere(rays: Rays, radius: float) -> np.ndarray:
    """First hit of rays with a sphere centred at the local origin.

    Args:
        rays: local rays, each (P,), unit directions, origins outside the sphere.
        radius: sphere radius.

    Returns:
        (P,) distance to the entry point, inf for a miss.
    """
    ox, oy, oz, dx, dy, dz = rays
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - radius * radius
    disc = b * b - c
    with np.errstate(invalid="ignore"):
        t = -b - np.sqrt(disc)
    return np.where((disc >= 0) & (t > T_EPS), t, np.inf)


def intersect_box(rays: Rays, half: float) -> np.ndarray:
    """First hit of rays with the cube ``[-half, half]^3`` (slab method).

    Args:
        rays: local rays, each (P,), unit directions, origins outside the box.
        half: half the edge length.

    Returns:
        (P,) distance to the entry point, inf for a miss.
    """
    tmin = np.full(rays[3].shape, -np.inf, np.float32)
    tmax = np.full(rays[3].shape, np.inf, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for o, d in zip(rays[:3], rays[3:]):
            inv = 1.0 / d
            t1 = (-half - o) * inv
            t2 = (half - o) * inv
            # fmin/fmax drop the NaN of 0 * inf (a ray in a slab's boundary plane).
            tmin = np.fmax(tmin, np.fmin(t1, t2))
            tmax = np.fmin(tmax, np.fmax(t1, t2))
    return np.where((tmax >= tmin) & (tmin > T_EPS), tmin, np.inf)


def intersect_cylinder(rays: Rays, radius: float, half_height: float) -> np.ndarray:
    """First hit of rays with a closed cylinder about the local z axis.

    Args:
        rays: local rays, each (P,), unit directions, origins outside the cylinder.
        radius: cylinder radius.
        half_height: half the height; the cylinder spans ``|z| <= half_height``.

    Returns:
        (P,) distance to the entry point (side or cap), inf for a miss.
    """
    ox, oy, oz, dx, dy, dz = rays
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - radius * radius
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(disc)) / a
        side_ok = (disc >= 0) & (t_side > T_EPS) & (np.abs(oz + t_side * dz) <= half_height)
        t_side = np.where(side_ok, t_side, np.inf)
        # A ray enters through the cap that faces it: the top one when travelling down.
        t_cap = (np.where(dz < 0, half_height, -half_height) - oz) / dz
        cx, cy = ox + t_cap * dx, oy + t_cap * dy
        cap_ok = (t_cap > T_EPS) & (cx * cx + cy * cy <= radius * radius)
    return np.minimum(t_side, np.where(cap_ok, t_cap, np.inf))


def normal_sphere(px: np.ndarray, py: np.ndarray, pz: np.ndarray, radius: float) -> Vec3:
    """Outward unit normals at local points on a sphere.

    Args:
        px, py, pz: (P,) local surface points.
        radius: sphere radius.

    Returns:
        Tuple of three (P,) arrays.
    """
    return px / radius, py / radius, pz / radius


def normal_box(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> Vec3:
    """Outward unit normals at local points on a cube centred at the origin.

    The face is the one whose axis has the largest |coordinate|, so the edge length is not
    needed.

    Args:
        px, py, pz: (P,) local surface points.

    Returns:
        Tuple of three (P,) arrays.
    """
    ax, ay, az = np.abs(px), np.abs(py), np.abs(pz)
    on_x = (ax >= ay) & (ax >= az)
    on_y = ~on_x & (ay >= az)
    on_z = ~on_x & ~on_y
    return np.sign(px) * on_x, np.sign(py) * on_y, np.sign(pz) * on_z


def normal_cylinder(
    px: np.ndarray, py: np.ndarray, pz: np.ndarray, radius: float, half_height: float
) -> Vec3:
    """Outward unit normals at local points on a closed cylinder about z.

    Args:
        px, py, pz: (P,) local surface points.
        radius: cylinder radius.
        half_height: half the height.

    Returns:
        Tuple of three (P,) arrays.
    """
    # A point belongs to a cap when it is nearer the cap plane than the side, relative to size.
    cap = (half_height - np.abs(pz)) * radius < (radius - np.sqrt(px * px + py * py)) * half_height
    return (
        np.where(cap, 0.0, px / radius),
        np.where(cap, 0.0, py / radius),
        np.where(cap, np.sign(pz), 0.0),
    )
