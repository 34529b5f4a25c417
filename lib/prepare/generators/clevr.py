"""CLEVR-like scenes with exact instance masks, rendered by vectorised ray casting in NumPy.

A stand-in for DeepMind's ``clevr_with_masks`` (Johnson et al.'s CLEVR, rendered in Blender)
that needs no Blender or GPU. Scenes follow CLEVR's recipe (``render_images.py`` and
``properties.json``):

- 3D objects: sphere, cube, cylinder; sizes small (0.35) and large (0.7) in CLEVR's
  half-size units (sphere and cylinder radius, half the cube's edge, half the cylinder's
  height); CLEVR's eight colours; rubber or metal; rotated about the vertical axis; resting
  on a grey ground plane at ``z = half size``; ``x, y`` uniform in ``[-3, 3]``.
- Placement: each new object must clear every earlier one by ``min_dist = 0.25`` between
  footprints, and by ``margin = 0.4`` along the camera's left/right and front/behind
  directions (CLEVR's rule, so the spatial relations are unambiguous); after 50 failed tries
  for one object the whole layout is drawn again. One deviation: CLEVR measures the distance
  with the size ``r`` for every shape, which lets rotated cubes (footprint radius
  ``r * sqrt(2)``) interpenetrate; here the footprint radius is used, so objects never
  intersect in 3D.
- Visibility: as in CLEVR (``--min_pixels_per_object 200`` at 320x240) every object must
  own at least ``min_pixels`` pixels of the rendered mask; otherwise the layout is drawn
  again. The default, 200 pixels at 320x240 (0.26 % of the frame, about a 14x14 patch), is
  CLEVR's own, scaled with the image area at other resolutions.
- Camera: CLEVR's (Blender's default) at (7.48, -6.51, 5.34), 35 mm lens on a 32 mm sensor
  (49.1 degrees horizontal field of view), 320x240, position jittered by up to +-0.5 per axis
  (``--camera_jitter 0.5``) and then aimed at the origin again (CLEVR's script only moves
  the camera; re-aiming keeps the scene centred, a documented simplification).
- Lights: CLEVR's key (warm), fill (cool) and back lights at their ``base_scene.blend``
  positions (as Kubric's CLEVR setup lists them), each jittered by up to +-1 per axis, plus a
  weak sun. The key light is a 1x1 area light and casts soft shadows: 3x3 stratified shadow
  rays per point, traced at half resolution and interpolated (silhouette pixels traced at
  full resolution). The other lights cast no shadows.

Shading (linear RGB, an exposure scale, then the sRGB transfer curve): ambient + Lambert for
rubber with a faint Blinn-Phong sheen; metal is mostly a coloured mirror (one reflection
bounce against the ground and the other objects, shaded without shadows) plus tight
Blinn-Phong highlights. Point lights fall off as 1/d rather than 1/d^2, standing in for the
flatter falloff of CLEVR's large area lights and bounce light. Silhouettes are antialiased by
coverage (four label-only sub-pixel rays per silhouette pixel); the mask always comes from the
single ray through each pixel centre, so it is exact.

Speed: about 33 scenes/s of CPU time for 3-6 objects and 29 for 3-10 on one core of the
2-core development machine (``python -c "import time; from lib.prepare.generators.clevr import
generate; t=time.time(); list(generate(100, 0)); print(100/(time.time()-t))"``; add
``max_objects=10``); wall-clock rates drop with whatever else shares the cores. Everything is
NumPy float32, vectorised over rays, with screen-space culling: each object is intersected
only with the rays in its projected bounding box, and shadow rays start only from pixels in
the box of its shadow volume.

Label maps: 0 = ground/background, 1..N = objects in placement order. Factor arrays follow
the official file's layout: length ``max_objects + 1``, entry 0 the background, unused entries
padded (see :func:`scene_factors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lib.prepare.generators.clevr_geometry import (
    T_EPS,
    Camera,
    Rays,
    Vec3,
    intersect_box,
    intersect_cylinder,
    intersect_sphere,
    normal_box,
    normal_cylinder,
    normal_sphere,
    rotation_z,
    to_local,
)

Box = tuple[int, int, int, int]  # pixel box (row0, row1, col0, col1), half-open
# Per light at surface points: unit direction towards it (x, y, z) and intensity x falloff
# (x shadow visibility); floats where uniform (a directional light).
LightTerms = tuple[
    "np.ndarray | float", "np.ndarray | float", "np.ndarray | float", "np.ndarray | float"
]

__all__ = [
    "Camera",
    "Light",
    "SceneObject",
    "Scene",
    "SHAPES",
    "SIZES",
    "SIZE_VALUES",
    "COLOR_NAMES",
    "COLORS",
    "MATERIALS",
    "clevr_camera",
    "clevr_lights",
    "sample_scene",
    "render_scene",
    "scene_factors",
    "generate",
    "min_pixels_for",
]

SHAPES = ("sphere", "cube", "cylinder")
SIZES = ("small", "large")
SIZE_VALUES = (0.35, 0.7)  # half-size in world units, CLEVR's properties.json
COLOR_NAMES = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
COLORS = (
    (87, 87, 87),
    (173, 35, 35),
    (42, 75, 215),
    (29, 105, 20),
    (129, 74, 25),
    (129, 38, 192),
    (41, 208, 208),
    (255, 238, 51),
)
MATERIALS = ("rubber", "metal")


def _srgb_to_linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


# CLEVR's colours are display (sRGB) values; shading happens in linear light and the image
# is sRGB-encoded at the end, so a well-lit surface shows about its listed colour.
LINEAR_COLORS = tuple(tuple(_srgb_to_linear(v / 255.0) for v in rgb) for rgb in COLORS)

HEIGHT, WIDTH = 240, 320
MIN_PIXELS = 200  # CLEVR's --min_pixels_per_object, at 320x240
PLACEMENT_EXTENT = 3.0  # x, y uniform in [-3, 3]
MIN_DIST = 0.25
MARGIN = 0.4
MAX_RETRIES = 50  # tries per object before the layout is drawn again
# Layouts attempted together (vectorised, see _place_objects): a few at first, doubling up
# to LAYOUT_BATCH while they keep failing (10-object layouts fail about 30 times in 31).
FIRST_LAYOUT_BATCH, LAYOUT_BATCH = 4, 64
MAX_LAYOUTS = 10_000  # give up (an error) rather than loop forever on impossible settings
SQRT2, SQRT3 = 2.0**0.5, 3.0**0.5
_CUBE_CORNERS = tuple((sx, sy, sz) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1))
CAMERA_POSITION = (7.48113, -6.50764, 5.34367)

# Shading constants (linear RGB). Tuned by eye against CLEVR images: a mid-grey ground,
# soft contrast, no pure black.
GROUND_ALBEDO = 0.5
AMBIENT = 0.2
EXPOSURE = 0.4  # linear scale before the sRGB curve: a mid-grey ground, as in CLEVR
ENVIRONMENT = 0.5  # what a metal reflects where its mirror ray escapes to the sky
RUBBER_SPECULAR, RUBBER_SHININESS = 0.08, 16  # Blinn-Phong exponents: powers of two
METAL_DIFFUSE, METAL_REFLECT = 0.25, 0.85
METAL_SPECULAR, METAL_SHININESS = 1.2, 64
SHADOW_GRID = 3  # soft shadows: SHADOW_GRID**2 stratified points on the area light
AA_OFFSETS = ((-0.375, -0.125), (-0.125, 0.375), (0.375, 0.125), (0.125, -0.375))


@dataclass(frozen=True)
class SceneObject:
    """One CLEVR object.

    Attributes:
        shape: index into :data:`SHAPES` (0 sphere, 1 cube, 2 cylinder).
        size: index into :data:`SIZES` (0 small, 1 large).
        color: index into :data:`COLORS`.
        material: index into :data:`MATERIALS` (0 rubber, 1 metal).
        position: (x, y, z) centre in world units; resting on the ground means z = half size.
        rotation: angle about the vertical axis in degrees (as CLEVR records it).
    """

    shape: int
    size: int
    color: int
    material: int
    position: tuple[float, float, float]
    rotation: float = 0.0

    @property
    def half_size(self) -> float:
        """Sphere/cylinder radius, half the cube edge, half the cylinder height."""
        return SIZE_VALUES[self.size]

    @property
    def footprint_radius(self) -> float:
        """Radius of the smallest vertical cylinder about the centre that holds the object."""
        return self.half_size * (SQRT2 if SHAPES[self.shape] == "cube" else 1.0)

    @property
    def bounding_radius(self) -> float:
        """Radius of the smallest sphere about the centre that holds the object."""
        factor = {"sphere": 1.0, "cube": SQRT3, "cylinder": SQRT2}
        return self.half_size * factor[SHAPES[self.shape]]


@dataclass(frozen=True)
class Light:
    """A light source.

    Attributes:
        position: (3,) world position; for a directional light, a point along the direction
            towards the light (only the direction matters).
        color: (3,) linear RGB tint.
        intensity: irradiance at the world origin, for a surface facing the light (point
            lights fall off as ``d0 / d``, ``d0`` being their distance from the origin).
        directional: True for a sun-like light at infinity.
        shadow: whether the light casts shadows (shadow rays are traced).
        size: edge of the square area light in world units; 0 gives hard shadows.
    """

    position: tuple[float, float, float]
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    intensity: float = 1.0
    directional: bool = False
    shadow: bool = False
    size: float = 0.0


class Scene(NamedTuple):
    """A sampled scene, ready for :func:`render_scene`."""

    objects: tuple[SceneObject, ...]
    camera: Camera
    lights: tuple[Light, ...]


def _hex_rgb(value: int) -> tuple[float, float, float]:
    return ((value >> 16) / 255.0, ((value >> 8) & 255) / 255.0, (value & 255) / 255.0)


def _jitter(rng: np.random.Generator | None, amount: float) -> np.ndarray:
    # CLEVR's rand(L) = 2 * L * (random() - 0.5): uniform in [-L, L] per axis.
    if rng is None or amount == 0:
        return np.zeros(3)
    return rng.uniform(-amount, amount, size=3)


def clevr_camera(rng: np.random.Generator | None = None, jitter: float = 0.5) -> Camera:
    """CLEVR's camera, optionally jittered.

    Args:
        rng: random generator; None gives the unjittered camera.
        jitter: maximum displacement per axis (CLEVR's ``--camera_jitter``).

    Returns:
        A :class:`Camera` looking at the origin.
    """
    pos = np.asarray(CAMERA_POSITION) + _jitter(rng, jitter)
    return Camera(position=tuple(float(v) for v in pos))


def clevr_lights(rng: np.random.Generator | None = None, jitter: float = 1.0) -> tuple[Light, ...]:
    """CLEVR's lights (positions and tints from ``base_scene.blend``), optionally jittered.

    Args:
        rng: random generator; None gives the unjittered lights.
        jitter: maximum displacement per axis for key, fill and back lights (CLEVR's
            ``--key_light_jitter`` etc., all 1.0 by default).

    Returns:
        Tuple of :class:`Light`: key (shadowing area light), fill, back, sun.
    """
    base = (
        ((6.44671, -2.90517, 4.2584), _hex_rgb(0xFFEDD0), 1.0, True, 1.0),  # key
        ((-4.67112, -4.0136, 3.01122), _hex_rgb(0xC2D0FF), 0.25, False, 0.0),  # fill
        ((-1.1685, 2.64602, 5.81574), (1.0, 1.0, 1.0), 0.3, False, 0.0),  # back
    )
    lights = []
    for pos, color, intensity, shadow, size in base:
        p = np.asarray(pos) + _jitter(rng, jitter)
        lights.append(Light(tuple(float(v) for v in p), color, intensity, False, shadow, size))
    # The sun: weak, from high above, not jittered (CLEVR jitters only the three lamps).
    lights.append(Light((11.6608, -6.62799, 25.8232), (1.0, 1.0, 1.0), 0.1, True))
    return tuple(lights)


def min_pixels_for(height: int, width: int) -> int:
    """CLEVR's 200-pixel visibility threshold at 320x240, scaled with the image area."""
    return max(1, round(MIN_PIXELS * height * width / (HEIGHT * WIDTH)))


# ----------------------------------------------------------------------------------------
# Ray casting


def _intersect_object(rays: Rays, obj: SceneObject) -> np.ndarray:
    """Distances at which world rays first hit one object (inf for a miss), each (P,)."""
    shape = SHAPES[obj.shape]
    center = np.asarray(obj.position)
    r = obj.half_size
    if shape == "sphere":
        return intersect_sphere(to_local(rays, center, None), r)
    if shape == "cylinder":
        return intersect_cylinder(to_local(rays, center, None), r, r)
    return intersect_box(to_local(rays, center, rotation_z(obj.rotation)), r)


def _object_normals(px: np.ndarray, py: np.ndarray, pz: np.ndarray, obj: SceneObject) -> Vec3:
    """World unit normals at world points on ``obj``'s surface, each (P,)."""
    cx, cy, cz = (float(v) for v in obj.position)
    shape = SHAPES[obj.shape]
    r = obj.half_size
    lx, ly, lz = px - cx, py - cy, pz - cz
    if shape == "sphere":
        return normal_sphere(lx, ly, lz, r)
    if shape == "cylinder":
        return normal_cylinder(lx, ly, lz, r, r)
    rot = rotation_z(obj.rotation)
    c, s = float(rot[0, 0]), float(rot[1, 0])
    nx, ny, nz = normal_box(c * lx + s * ly, c * ly - s * lx, lz)
    return c * nx - s * ny, s * nx + c * ny, nz


def _take(a: np.ndarray | float, idx: np.ndarray | None) -> np.ndarray | float:
    """``a[idx]`` for arrays; scalars (uniform quantities, shared origins) pass through."""
    return a if idx is None or np.ndim(a) == 0 else a[idx]


def _select(rays: Rays, idx: np.ndarray | None) -> Rays:
    return rays if idx is None else tuple(_take(a, idx) for a in rays)


def _closest_hit(
    rays: Rays,
    objects: Sequence[SceneObject],
    candidates: Sequence[np.ndarray | None],
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest surface along each ray: the ground plane z = 0 or an object.

    Args:
        rays: world rays, each (P,).
        objects: the N scene objects.
        candidates: per object, the indices of the rays that may hit it (a conservative
            cull), or None for all rays.

    Returns:
        ``t`` (P,) float32 distance (inf where the ray escapes upwards) and ``ids`` (P,)
        int32: 0 for the ground or a miss, k for object k (1-based, placement order). On an
        exact tie the earlier object wins.
    """
    oz, dz = rays[2], rays[5]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -oz / dz
    t = np.where((dz < 0) & (t > T_EPS), t, np.inf).astype(np.float32)
    ids = np.zeros(t.shape, np.int32)
    for k, (obj, idx) in enumerate(zip(objects, candidates), start=1):
        if idx is not None and idx.size == 0:
            continue
        t_obj = _intersect_object(_select(rays, idx), obj)
        if idx is None:
            closer = t_obj < t
            t = np.where(closer, t_obj, t)
            ids[closer] = k
        else:
            closer = t_obj < t[idx]
            sel = idx[closer]
            t[sel] = t_obj[closer]
            ids[sel] = k
    return t, ids


def _object_corners(objects: Sequence[SceneObject]) -> np.ndarray:
    """(N, 8, 3) corners of the axis-aligned cubes around the objects' bounding spheres."""
    centres = np.array([obj.position for obj in objects], np.float64).reshape(-1, 1, 3)
    radii = np.array([obj.bounding_radius for obj in objects], np.float64).reshape(-1, 1, 1)
    return centres + radii * np.asarray(_CUBE_CORNERS, np.float64)


def _screen_boxes(points: np.ndarray, camera: Camera, height: int, width: int) -> list[Box | None]:
    """Pixel boxes ``(row0, row1, col0, col1)`` (half-open, one pixel of slack) around points.

    The projection of a convex hull is the hull of the projected points, so the box of
    projected corners bounds everything inside them.

    Args:
        points: (N, K, 3) world points, K per box.
        camera: the camera.
        height: image height.
        width: image width.

    Returns:
        N boxes; ``None`` where a point lies behind the camera (every pixel is a candidate).
    """
    if points.shape[0] == 0:
        return []
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = camera.project(points, height, width)  # (N, K, 3)
    behind = ~(proj[..., 2] > 1e-3).all(axis=1)  # also catches NaN (degenerate points)
    # Boxes marked behind are dropped below; nan_to_num only keeps their cast quiet.
    xy = np.nan_to_num(proj[..., :2], nan=0.0, posinf=0.0, neginf=0.0)
    limit = np.array([width, height])
    lo = np.clip(np.floor(xy.min(axis=1)) - 1, 0, limit).astype(int)
    hi = np.clip(np.ceil(xy.max(axis=1)) + 1, 0, limit).astype(int)
    boxes = zip(lo[:, 1].tolist(), hi[:, 1].tolist(), lo[:, 0].tolist(), hi[:, 0].tolist())
    return [None if b else box for b, box in zip(behind.tolist(), boxes)]


def _grid_candidates(boxes: Sequence[Box | None], width: int) -> list[np.ndarray | None]:
    """Flat pixel indices inside each screen box, for rays through a full pixel grid."""
    out: list[np.ndarray | None] = []
    for box in boxes:
        if box is None:
            out.append(None)
            continue
        r0, r1, c0, c1 = box
        out.append((np.arange(r0, r1)[:, None] * width + np.arange(c0, c1)[None, :]).ravel())
    return out


def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (H*W,) of every pixel centre, row-major."""
    rows, cols = np.meshgrid(
        np.arange(height, dtype=np.float32) + 0.5,
        np.arange(width, dtype=np.float32) + 0.5,
        indexing="ij",
    )
    return rows.ravel(), cols.ravel()


class _Primary(NamedTuple):
    """Pixel-centre rays of a frame and what they hit (shared by sampling and rendering)."""

    rays: Rays
    boxes: list[Box | None]  # per object, its screen box (see _screen_boxes)
    t: np.ndarray  # (H*W,) float32 hit distance
    ids: np.ndarray  # (H*W,) int32 object id, 0 = ground


def _primary_hits(
    objects: Sequence[SceneObject],
    camera: Camera,
    height: int,
    width: int,
    rays: Rays | None = None,
) -> _Primary:
    """Trace one ray per pixel centre (``rays``: precomputed ones for this camera)."""
    if rays is None:
        rays = camera.rays(*_pixel_grid(height, width), height, width)
    boxes = _screen_boxes(_object_corners(objects), camera, height, width)
    t, ids = _closest_hit(rays, objects, _grid_candidates(boxes, width))
    return _Primary(rays, boxes, t, ids)


# ----------------------------------------------------------------------------------------
# Shading


def _light_samples(light: Light) -> list[tuple[float, float, float]]:
    """Points on a square area light facing the origin, on a fixed stratified grid.

    Returns:
        ``SHADOW_GRID**2`` points (one, the position, for a point or directional light).
    """
    pos = np.asarray(light.position, np.float64)
    if light.size <= 0 or light.directional:
        return [tuple(float(v) for v in pos)]
    axis = -pos / np.linalg.norm(pos)
    u = np.cross(axis, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    v = np.cross(u, axis)
    # Cell centres of a SHADOW_GRID x SHADOW_GRID grid: deterministic, no sampling noise.
    g = (np.arange(SHADOW_GRID) + 0.5) / SHADOW_GRID - 0.5
    a, b = np.meshgrid(g, g, indexing="ij")
    pts = pos + light.size * (a.reshape(-1, 1) * u + b.reshape(-1, 1) * v)
    return [tuple(float(c) for c in p) for p in pts]


def _shadow_boxes(
    objects: Sequence[SceneObject],
    light: Light,
    samples: Sequence[tuple[float, float, float]],
    camera: Camera,
    height: int,
    width: int,
) -> list[Box | None]:
    """Per object, a pixel box (as :func:`_screen_boxes`) holding every pixel it may shadow.

    Every visible surface point has z >= 0, and the part of an object's shadow volume above
    the ground lies in the convex hull of the object and of its shadow on the ground (the
    projection of its bounding cube's corners from each point of the light onto z = 0). The
    screen box of that hull bounds the pixels worth a shadow test. ``None`` (test every pixel)
    when the light is not above the object or the hull reaches behind the camera.
    """
    corners = _object_corners(objects)  # (N, 8, 3)
    n = corners.shape[0]
    if light.directional:
        d = np.asarray(light.position, np.float64)
        d /= np.linalg.norm(d)
        if d[2] <= 1e-6:
            return [None] * n
        ground = corners - (corners[..., 2:3] / d[2]) * d
        return _screen_boxes(np.concatenate([corners, ground], axis=1), camera, height, width)
    samples = np.asarray(samples)
    src, c = samples[None, :, None, :], corners[:, None, :, :]  # (1, S, 1, 3), (N, 1, 8, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = src[..., 2:3] / (src[..., 2:3] - c[..., 2:3])
        ground = (src + (c - src) * scale).reshape(n, -1, 3)
    boxes = _screen_boxes(np.concatenate([corners, ground], axis=1), camera, height, width)
    below = samples[:, 2].min() <= corners[..., 2].max(axis=1) + 1e-6
    return [None if b else box for b, box in zip(below.tolist(), boxes)]


def _shadow(
    points: Vec3,
    ids: np.ndarray,
    light: Light,
    objects: Sequence[SceneObject],
    regions: Sequence[np.ndarray | None] | None = None,
    samples: Sequence[tuple[float, float, float]] | None = None,
) -> np.ndarray:
    """Fraction of the light visible from each surface point (1 = fully lit).

    Args:
        points: (P,) world x, y, z of surface points.
        ids: (P,) object id of each point (0 = ground); an object does not shadow itself
            (all objects are convex: its back faces are already dark by Lambert's law).
        light: the light.
        objects: the N scene objects.
        regions: per object, indices of the points that may be in its shadow (a conservative
            screen-space cull, see :func:`_shadow_boxes`), or None for all points.
        samples: the light's sample points (:func:`_light_samples`), if already computed.

    Returns:
        (P,) float32 visibility in [0, 1].
    """
    px, py, pz = points
    if samples is None:
        samples = _light_samples(light)
    n_samples = len(samples)
    blocked = np.zeros(px.shape, np.float32)
    # Light points lie within half the light's diagonal of its centre.
    grow = light.size * SQRT2 / 2
    centre = [float(v) for v in np.mean(samples, axis=0)]
    for k, obj in enumerate(objects, start=1):
        reg = None if regions is None else regions[k - 1]
        if reg is not None and reg.size == 0:
            continue
        qx, qy, qz, qid = (_take(a, reg) for a in (px, py, pz, ids))
        if light.directional:
            d = np.asarray(light.position, np.float64)
            lx, ly, lz = (d / np.linalg.norm(d)).tolist()
            dist = np.inf
        else:
            lx, ly, lz = centre[0] - qx, centre[1] - qy, centre[2] - qz
            dist = np.sqrt(lx * lx + ly * ly + lz * lz)
            lx, ly, lz = lx / dist, ly / dist, lz / dist
        cx, cy, cz = (float(v) for v in obj.position)
        wx, wy, wz = cx - qx, cy - qy, cz - qz
        proj = wx * lx + wy * ly + wz * lz
        perp2 = wx * wx + wy * wy + wz * wz - proj * proj
        # Rays to other points of the light diverge from the ray to its centre linearly with
        # the distance travelled: by at most ``grow * (proj + R) / dist`` inside the sphere.
        radius = float(obj.bounding_radius)
        reach = radius + (grow * (np.maximum(proj, 0.0) + radius)) / dist
        near = (perp2 < reach * reach) & (proj > -radius) & (proj < dist + radius) & (qid != k)
        sel = np.flatnonzero(near)
        if sel.size == 0:
            continue
        sx0, sy0, sz0 = qx[sel], qy[sel], qz[sel]
        if light.directional:
            ones = np.ones(sel.size, np.float32)
            rays = (sx0, sy0, sz0, lx * ones, ly * ones, lz * ones)
            hit = np.isfinite(_intersect_object(rays, obj)).astype(np.float32)
        else:
            # All light samples at once, as (S, n) arrays: one NumPy pass per operation.
            src = np.asarray(samples, np.float32)
            sx, sy, sz = (src[:, i : i + 1] - q[None] for i, q in enumerate((sx0, sy0, sz0)))
            sd = np.sqrt(sx * sx + sy * sy + sz * sz)
            origin = tuple(np.broadcast_to(q, sd.shape) for q in (sx0, sy0, sz0))
            t = _intersect_object((*origin, sx / sd, sy / sd, sz / sd), obj)
            hit = (t < sd).sum(axis=0, dtype=np.float32)
        # Two objects may block the same sample ray; capping at the sample count slightly
        # overstates blocking where two penumbrae overlap, which is invisible.
        blocked[sel if reg is None else reg[sel]] += hit
    return 1.0 - np.minimum(blocked, n_samples) * (1.0 / n_samples)


def _expand_even(
    a: np.ndarray, n: int, axis: int, combine: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Expand samples taken at even positions along ``axis`` to all ``n`` positions.

    Even position 2i takes sample i; odd position 2i+1 takes ``combine(sample i, sample i+1)``
    (sample i+1 clamped to the last one). Slicing, not fancy indexing: several times faster.
    """
    a = np.moveaxis(a, axis, 0)
    out = np.empty((n, *a.shape[1:]), a.dtype)
    out[0::2] = a[: (n + 1) // 2]
    n_odd = n // 2
    upper = a[1 : n_odd + 1]
    if upper.shape[0] < n_odd:
        upper = np.concatenate([upper, a[-1:]])
    out[1::2] = combine(a[:n_odd], upper)
    return np.moveaxis(out, 0, axis)


def _mean2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x + y) * 0.5


def _shadow_map(
    points: Vec3,
    ids: np.ndarray,
    light: Light,
    objects: Sequence[SceneObject],
    camera: Camera,
    height: int,
    width: int,
) -> np.ndarray:
    """Soft-shadow visibility for every pixel of the frame, traced at half resolution.

    Penumbrae are smooth, so shadow rays are traced only from the pixels at even rows and
    columns and bilinearly interpolated in between. Where the (up to four) samples around a
    pixel do not all show the pixel's own surface (silhouettes), interpolation could leak
    across depth edges, so those pixels are traced themselves. This is a quarter of the rays
    plus a few percent.

    Args:
        points: (H*W,) world x, y, z of the pixel-centre hits.
        ids: (H*W,) their object ids (0 = ground).
        light: the shadowing light.
        objects: the N scene objects.
        camera: the camera (for the screen-space cull).
        height: image height.
        width: image width.

    Returns:
        (H*W,) float32 visibility in [0, 1].
    """
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    sample_rows, sample_cols = np.arange(h2) * 2, np.arange(w2) * 2
    flat = (sample_rows[:, None] * width + sample_cols[None, :]).ravel()
    samples = _light_samples(light)
    regions: list[np.ndarray | None] = []
    for box in _shadow_boxes(objects, light, samples, camera, height, width):
        if box is None:
            regions.append(None)
            continue
        r0, r1, c0, c1 = box
        # Sample rows 2i inside [r0, r1): i in [ceil(r0 / 2), ceil(r1 / 2)).
        i = np.arange((r0 + 1) // 2, (r1 + 1) // 2)
        j = np.arange((c0 + 1) // 2, (c1 + 1) // 2)
        regions.append((i[:, None] * w2 + j[None, :]).ravel())
    low_points = tuple(p[flat] for p in points)
    low_ids = ids[flat]
    low = _shadow(low_points, low_ids, light, objects, regions, samples).reshape(h2, w2)
    low_ids = low_ids.reshape(h2, w2)
    vis = _expand_even(_expand_even(low, height, 0, _mean2), width, 1, _mean2)
    # A pixel may interpolate only if every sample around it shows its own surface: the
    # smallest and the largest id around it both equal its id.
    full_ids = ids.reshape(height, width)
    lo_id = _expand_even(_expand_even(low_ids, height, 0, np.minimum), width, 1, np.minimum)
    hi_id = _expand_even(_expand_even(low_ids, height, 0, np.maximum), width, 1, np.maximum)
    same = (lo_id == full_ids) & (hi_id == full_ids)
    vis = vis.ravel()
    fix = np.flatnonzero(~same.ravel())
    if fix.size:
        vis[fix] = _shadow(tuple(p[fix] for p in points), ids[fix], light, objects, None, samples)
    return vis


def _light_terms(light: Light, points: Vec3) -> LightTerms:
    """Unit direction towards a light and its intensity with falloff, at surface points.

    Point lights fall off as ``d0 / d`` (``d0`` = the light's distance from the origin, so
    ``intensity`` is the irradiance there): CLEVR's large area lights and bounce light make
    the falloff much flatter than the inverse square.

    Returns:
        ``(lx, ly, lz, weight)``, each (P,) float32 (Python floats for a directional light).
    """
    if light.directional:
        d = np.asarray(light.position, np.float64)
        lx, ly, lz = (d / np.linalg.norm(d)).tolist()
        return lx, ly, lz, float(light.intensity)
    lx, ly, lz = (float(c) - p for c, p in zip(light.position, points))
    inv = 1.0 / np.sqrt(lx * lx + ly * ly + lz * lz)
    d0 = float(np.linalg.norm(light.position))
    return lx * inv, ly * inv, lz * inv, (light.intensity * d0) * inv


def _ground_color(
    points: Vec3, lights: Sequence[Light], visibility: Sequence[np.ndarray | None]
) -> np.ndarray:
    """Linear RGB of the lit ground (normal +z) at ground points.

    Specialised because the ground covers most pixels: with n = +z the cosine is the light
    direction's z, so no normalisation is needed (``weight * cos = I d0 dz / d^2``).

    Args:
        points: (P,) world x, y, z (z = 0 on the ground).
        lights: the lights.
        visibility: per light, (P,) shadow visibility or None.

    Returns:
        (3, P) float32.
    """
    px, py, pz = points
    strengths = np.empty((len(lights), px.size), np.float32)
    for i, light in enumerate(lights):
        if light.directional:
            d = np.asarray(light.position, np.float64)
            strengths[i] = light.intensity * max(d[2] / np.linalg.norm(d), 0.0)
        else:
            lx, ly, lz = (float(c) - p for c, p in zip(light.position, points))
            d0 = float(np.linalg.norm(light.position))
            strengths[i] = (
                np.maximum(lz, 0.0) * (light.intensity * d0) / (lx * lx + ly * ly + lz * lz)
            )
        if visibility[i] is not None:
            strengths[i] *= visibility[i]
    colors = np.asarray([light.color for light in lights], np.float32).reshape(-1, 3)
    # einsum: markedly faster than a BLAS matmul for this (3, L) x (L, P) shape.
    return np.einsum("lc,lp->cp", colors * GROUND_ALBEDO, strengths) + GROUND_ALBEDO * AMBIENT


def _object_surface(
    points: Vec3, ids: np.ndarray, objects: Sequence[SceneObject]
) -> tuple[Vec3, np.ndarray, np.ndarray]:
    """Unit normals, linear albedo (3, M) and metal flags (M,) at points on objects (ids > 0)."""
    px, py, pz = points
    nx, ny, nz = (np.empty_like(px) for _ in range(3))
    albedo = np.empty((3, px.size), np.float32)
    metal = np.zeros(px.shape, bool)
    for k, obj in enumerate(objects, start=1):
        idx = np.flatnonzero(ids == k)
        if idx.size == 0:
            continue
        nx[idx], ny[idx], nz[idx] = _object_normals(px[idx], py[idx], pz[idx], obj)
        albedo[:, idx] = np.asarray(LINEAR_COLORS[obj.color], np.float32)[:, None]
        metal[idx] = MATERIALS[obj.material] == "metal"
    return (nx, ny, nz), albedo, metal


def _power(x: np.ndarray, exponent: int) -> np.ndarray:
    """``x ** exponent`` for a power of two by repeated squaring (np.power is much slower)."""
    for _ in range(exponent.bit_length() - 1):
        x = x * x
    return x


def _specular(
    dirs: Vec3,
    normals: Vec3,
    per_light: Sequence[LightTerms],
    lights: Sequence[Light],
    shininess: int,
) -> np.ndarray:
    """Blinn-Phong highlights (3, M) summed over lights.

    Args:
        dirs: (M,) view ray direction components.
        normals: (M,) unit normal components.
        per_light: per light ``(lx, ly, lz, weight)`` as from :func:`_light_terms`.
        lights: the lights (for their colours).
        shininess: Blinn-Phong exponent, a power of two.
    """
    dx, dy, dz = dirs
    nx, ny, nz = normals
    out = np.zeros((3, dx.size), np.float32)
    for (lx, ly, lz, weight), light in zip(per_light, lights):
        # Half vector between the light and the viewer (-d).
        hx, hy, hz = lx - dx, ly - dy, lz - dz
        cos_h = (nx * hx + ny * hy + nz * hz) / np.sqrt(hx * hx + hy * hy + hz * hz + 1e-12)
        lit = (nx * lx + ny * ly + nz * lz) > 0
        s = (weight * lit) * _power(np.maximum(cos_h, 0.0), shininess)
        out += np.asarray(light.color, np.float32)[:, None] * s
    return out


def _diffuse(normals: Vec3, per_light: Sequence[LightTerms], lights: Sequence[Light]) -> np.ndarray:
    """Lambertian irradiance (3, M) from per-light terms (weights already shadowed)."""
    nx, ny, nz = normals
    strengths = np.zeros((len(per_light), nx.size), np.float32)
    for i, (lx, ly, lz, w) in enumerate(per_light):
        strengths[i] = w * np.maximum(nx * lx + ny * ly + nz * lz, 0.0)
    colors = np.asarray([light.color for light in lights], np.float32).reshape(-1, 3)
    return np.einsum("lc,lp->cp", colors, strengths)


def _sphere_candidates(
    rays: Rays, objects: Sequence[SceneObject], exclude: np.ndarray
) -> list[np.ndarray]:
    """Per object, the rays that pass through its bounding sphere, ahead of their origin.

    Args:
        rays: world rays, each (M,), unit directions.
        objects: the N scene objects.
        exclude: (M,) an object id per ray that it must not hit (0 for none).

    Returns:
        Per object, (M_k,) indices of candidate rays.
    """
    ox, oy, oz, dx, dy, dz = rays
    out = []
    for k, obj in enumerate(objects, start=1):
        cx, cy, cz = (float(v) for v in obj.position)
        wx, wy, wz = cx - ox, cy - oy, cz - oz
        proj = wx * dx + wy * dy + wz * dz
        perp2 = wx * wx + wy * wy + wz * wz - proj * proj
        r = float(obj.bounding_radius)
        out.append(np.flatnonzero((perp2 < r * r) & (proj > -r) & (exclude != k)))
    return out


def _mirror_color(
    rays: Rays, source_ids: np.ndarray, objects: Sequence[SceneObject], lights: Sequence[Light]
) -> np.ndarray:
    """What a mirror ray sees: ground or objects lit without shadows or highlights, or sky.

    Args:
        rays: mirror rays leaving metal surfaces, each (M,).
        source_ids: (M,) the object each ray leaves (never hit by it).
        objects: the N scene objects.
        lights: the lights.

    Returns:
        (3, M) float32 linear RGB.
    """
    t, ids = _closest_hit(rays, objects, _sphere_candidates(rays, objects, source_ids))
    points = _hit_points(rays, t)
    color = _ground_color(points, lights, [None] * len(lights))
    oidx = np.flatnonzero(ids > 0)
    if oidx.size:
        sub = tuple(p[oidx] for p in points)
        normals, albedo, _ = _object_surface(sub, ids[oidx], objects)
        per_light = [_light_terms(light, sub) for light in lights]
        color[:, oidx] = albedo * (AMBIENT + _diffuse(normals, per_light, lights))
    color[:, ~np.isfinite(t)] = ENVIRONMENT
    return color


def _shade_objects(
    dirs: Vec3,
    points: Vec3,
    ids: np.ndarray,
    objects: Sequence[SceneObject],
    lights: Sequence[Light],
    visibility: Sequence[np.ndarray | None],
) -> np.ndarray:
    """Linear RGB of object surface points seen along view rays.

    Args:
        dirs: (M,) view ray direction components.
        points: (M,) world hit points.
        ids: (M,) object ids (all > 0).
        objects: the N scene objects.
        lights: the lights.
        visibility: per light, (M,) shadow visibility or None.

    Returns:
        (3, M) float32.
    """
    normals, albedo, metal = _object_surface(points, ids, objects)
    per_light = []
    for light, vis in zip(lights, visibility):
        lx, ly, lz, w = _light_terms(light, points)
        per_light.append((lx, ly, lz, w if vis is None else w * vis))
    color = albedo * (AMBIENT + _diffuse(normals, per_light, lights))
    for material, idx in enumerate((np.flatnonzero(~metal), np.flatnonzero(metal))):
        if idx.size == 0:
            continue
        d = tuple(a[idx] for a in dirs)
        n = tuple(a[idx] for a in normals)
        sub_light = [tuple(_take(a, idx) for a in terms) for terms in per_light]
        if MATERIALS[material] == "rubber":
            color[:, idx] += RUBBER_SPECULAR * _specular(d, n, sub_light, lights, RUBBER_SHININESS)
            continue
        d_n = d[0] * n[0] + d[1] * n[1] + d[2] * n[2]
        mirror = (*(p[idx] for p in points), *(dk - 2 * d_n * nk for dk, nk in zip(d, n)))
        # One mirror bounce, tinted by the metal's colour (a conductor's reflectance).
        reflected = _mirror_color(mirror, ids[idx], objects, lights)
        spec = _specular(d, n, sub_light, lights, METAL_SHININESS)
        a = albedo[:, idx]
        color[:, idx] = (
            METAL_DIFFUSE * color[:, idx]
            + METAL_REFLECT * a * reflected
            + METAL_SPECULAR * (0.5 + 0.5 * a) * spec
        )
    return color


def _hit_points(rays: Rays, t: np.ndarray) -> Vec3:
    """World hit points ``o + t d``, each (P,) (the ray origin where it escapes, t = inf)."""
    ox, oy, oz, dx, dy, dz = rays
    tt = np.where(np.isfinite(t), t, np.float32(0.0))
    return ox + tt * dx, oy + tt * dy, oz + tt * dz


def _antialias(
    color: np.ndarray,
    mask: np.ndarray,
    camera: Camera,
    objects: Sequence[SceneObject],
    boxes: Sequence[Box | None],
    height: int,
    width: int,
) -> np.ndarray:
    """Coverage antialiasing of silhouette pixels.

    Four extra rays per silhouette pixel (a pixel whose label differs from a 4-neighbour's)
    find which surface covers each sub-sample; each sub-sample takes the colour of the pixel
    centre nearby that shows the same surface. The pixel becomes the mean of its centre and
    the four sub-samples. Only labels are traced, so this costs little.

    Args:
        color: (3, H*W) linear RGB from pixel-centre rays; updated in place.
        mask: (H, W) label map from pixel-centre rays.
        camera: the camera.
        objects: the N scene objects.
        boxes: per object, screen box from :func:`_screen_boxes`.
        height: image height.
        width: image width.

    Returns:
        ``color``, antialiased.
    """
    edge = np.zeros((height, width), bool)
    dv = mask[1:] != mask[:-1]
    dh = mask[:, 1:] != mask[:, :-1]
    edge[1:] |= dv
    edge[:-1] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    er, ec = np.nonzero(edge)
    if er.size == 0:
        return color
    off = np.asarray(AA_OFFSETS, np.float32)
    sub_rows = (er[None] + 0.5 + off[:, :1]).ravel()
    sub_cols = (ec[None] + 0.5 + off[:, 1:]).ravel()
    sub = camera.rays(sub_rows, sub_cols, height, width)
    cands = []
    for box in boxes:
        if box is None:
            cands.append(None)
            continue
        r0, r1, c0, c1 = box
        inside = (sub_rows >= r0) & (sub_rows < r1) & (sub_cols >= c0) & (sub_cols < c1)
        cands.append(np.flatnonzero(inside))
    _, sub_ids = _closest_hit(sub, objects, cands)
    sub_ids = sub_ids.reshape(len(AA_OFFSETS), er.size)
    # Neighbours in order of preference (4-neighbours first). The label map is padded with
    # -1 (never a label), so neighbours off the image never match and need no clamping.
    steps = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
    padded = np.pad(mask.astype(np.int16), 1, constant_values=-1)
    nb_labels = np.stack([padded[er + 1 + dr, ec + 1 + dc] for dr, dc in steps])
    nb = np.stack([(er + dr) * width + (ec + dc) for dr, dc in steps])
    centre = nb[0]
    acc = color[:, centre]
    cols_idx = np.arange(er.size)
    for s in range(len(AA_OFFSETS)):
        match = nb_labels == sub_ids[s]
        first = np.argmax(match, axis=0)
        # No nearby pixel shows that surface (a sliver): keep the centre's colour.
        src = np.where(match.any(axis=0), nb[first, cols_idx], centre)
        acc += color[:, src]
    color[:, centre] = acc / (len(AA_OFFSETS) + 1)
    return color


def _to_srgb(linear: np.ndarray, height: int, width: int) -> np.ndarray:
    """Exposure and the sRGB transfer curve, via a 4097-entry lookup table.

    Args:
        linear: (3, H*W) linear RGB (before exposure).
        height: image height.
        width: image width.

    Returns:
        (H, W, 3) float32 sRGB in [0, 1].
    """
    lut = np.linspace(0.0, 1.0, 4097)
    lut = np.where(lut <= 0.0031308, 12.92 * lut, 1.055 * lut ** (1 / 2.4) - 0.055)
    # One fused pass to table indices (a power over every pixel would be several times
    # slower); gathering through the transposed indices yields the (H, W, 3) layout directly.
    idx = np.clip(linear * (EXPOSURE * 4096) + 0.5, 0.0, 4096.5).astype(np.intp)
    return lut.astype(np.float32)[idx.T].reshape(height, width, 3)


def render_scene(
    objects: Sequence[SceneObject],
    camera: Camera,
    lights: Sequence[Light],
    height: int = HEIGHT,
    width: int = WIDTH,
    antialias: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene by ray casting.

    Args:
        objects: the N scene objects (N <= 255), labelled 1..N in this order.
        camera: the camera.
        lights: the lights (any with ``shadow=True`` cast shadows).
        height: image height in pixels.
        width: image width in pixels.
        antialias: smooth silhouettes with four extra label rays per silhouette pixel.

    Returns:
        ``image`` (height, width, 3) float32 sRGB in [0, 1] and ``mask`` (height, width) uint8
        label map (0 ground, k for object k) from the ray through each pixel centre.
    """
    return _render(objects, camera, lights, height, width, antialias)


def _render(
    objects: Sequence[SceneObject],
    camera: Camera,
    lights: Sequence[Light],
    height: int,
    width: int,
    antialias: bool,
    primary: _Primary | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render_scene`, reusing the pixel-centre hits when the caller has them."""
    if len(objects) > 255:
        raise ValueError(f"at most 255 objects fit a uint8 label map, got {len(objects)}")
    if primary is None:
        primary = _primary_hits(objects, camera, height, width)
    rays, boxes, t, ids = primary
    points = _hit_points(rays, t)
    visibility = [
        _shadow_map(points, ids, light, objects, camera, height, width)
        if light.shadow and objects
        else None
        for light in lights
    ]
    color = _ground_color(points, lights, visibility)
    color[:, ~np.isfinite(t)] = ENVIRONMENT
    oidx = np.flatnonzero(ids)
    if oidx.size:
        color[:, oidx] = _shade_objects(
            tuple(d[oidx] for d in rays[3:]),
            tuple(p[oidx] for p in points),
            ids[oidx],
            objects,
            lights,
            [None if v is None else v[oidx] for v in visibility],
        )
    mask = ids.reshape(height, width).astype(np.uint8)
    if antialias and objects:
        color = _antialias(color, mask, camera, objects, boxes, height, width)
    image = _to_srgb(color, height, width)
    return image, mask


# ----------------------------------------------------------------------------------------
# Scene sampling


def _ground_directions(camera: Camera) -> dict[str, np.ndarray]:
    """CLEVR's cardinal directions: the camera's left and behind, flattened onto the ground."""
    right, _, forward = camera.basis()
    out = {}
    for name, vec in (("behind", forward), ("left", -right)):
        flat = np.array([vec[0], vec[1], 0.0])
        out[name] = flat / np.linalg.norm(flat)
    out["front"] = -out["behind"]
    out["right"] = -out["left"]
    return out


def _place_objects(
    rng: np.random.Generator,
    num_objects: int,
    directions: dict[str, np.ndarray],
    min_dist: float,
    margin: float,
    batch: int,
) -> Iterator[list[SceneObject]]:
    """CLEVR's sequential placement, for ``batch`` independent layouts at once.

    Object by object, each layout draws ``MAX_RETRIES`` candidate positions and takes the
    first that keeps the distance and margin rules against the objects placed before it; a
    layout in which some object finds no spot is dropped (CLEVR then starts that layout
    over). Running a batch of layouts through NumPy together is what keeps dense scenes
    (10 objects fail about 30 times in 31) fast.

    Args:
        rng: random generator.
        num_objects: objects per layout.
        directions: CLEVR's cardinal ground directions (see :func:`_ground_directions`).
        min_dist: least gap between footprints.
        margin: least offset along each cardinal direction (unless exactly 0).
        batch: layouts attempted together.

    Yields:
        The successful layouts, in batch order (possibly none). All random numbers are drawn
        before the first one, so how many a caller consumes does not change the stream.
    """
    n, tries = num_objects, MAX_RETRIES
    sizes = rng.integers(len(SIZES), size=(batch, n))
    shapes = rng.integers(len(SHAPES), size=(batch, n))
    half = np.asarray(SIZE_VALUES)[sizes]
    foot = half * np.where(shapes == SHAPES.index("cube"), SQRT2, 1.0)
    cand = rng.uniform(-PLACEMENT_EXTENT, PLACEMENT_EXTENT, size=(batch, n, tries, 2))
    # left/right and front/behind are opposite pairs, so CLEVR's "0 < offset < margin along
    # each of the four" is "0 < |offset| < margin along left and along behind".
    (lx, ly), (bx, by) = directions["left"][:2].tolist(), directions["behind"][:2].tolist()
    xy = np.zeros((batch, n, 2))
    alive = np.ones(batch, bool)
    rows = np.arange(batch)
    for i in range(n):
        dx = cand[:, i, :, None, 0] - xy[:, None, :i, 0]  # (batch, tries, i)
        dy = cand[:, i, :, None, 1] - xy[:, None, :i, 1]
        gap = np.hypot(dx, dy) - foot[:, i, None, None] - foot[:, None, :i]
        bad = gap < min_dist
        for a in (np.abs(dx * lx + dy * ly), np.abs(dx * bx + dy * by)):
            bad |= (a > 0) & (a < margin)
        ok = ~bad.any(axis=-1)  # (batch, tries)
        alive &= ok.any(axis=1)
        xy[:, i] = cand[rows, i, np.argmax(ok, axis=1)]
    colors = rng.integers(len(COLORS), size=(batch, n))
    materials = rng.integers(len(MATERIALS), size=(batch, n))
    rotations = rng.uniform(0.0, 360.0, size=(batch, n))
    # Objects are built lazily: usually the first surviving layout is the one kept.
    for b in np.flatnonzero(alive):
        yield [
            SceneObject(
                shape=int(shapes[b, i]),
                size=int(sizes[b, i]),
                color=int(colors[b, i]),
                material=int(materials[b, i]),
                position=(float(xy[b, i, 0]), float(xy[b, i, 1]), float(half[b, i])),
                rotation=float(rotations[b, i]),
            )
            for i in range(n)
        ]


def sample_scene(
    rng: np.random.Generator,
    num_objects: int,
    height: int = HEIGHT,
    width: int = WIDTH,
    min_pixels: int | None = None,
    camera_jitter: float = 0.5,
    light_jitter: float = 1.0,
    min_dist: float = MIN_DIST,
    margin: float = MARGIN,
) -> Scene:
    """Draw a CLEVR-style scene in which every object is visible enough.

    Camera and lights are jittered once; then object layouts are drawn (see the module
    docstring) until every object owns at least ``min_pixels`` pixels of the label map.

    Args:
        rng: NumPy random generator (the only source of randomness).
        num_objects: number of objects N (0..255).
        height: image height used for the visibility test.
        width: image width used for the visibility test.
        min_pixels: least visible pixels per object; None = CLEVR's 200 at 320x240, scaled
            with the image area (:func:`min_pixels_for`).
        camera_jitter: maximum camera displacement per axis.
        light_jitter: maximum light displacement per axis.
        min_dist: least gap between object footprints.
        margin: least separation along the camera's cardinal directions.

    Returns:
        A :class:`Scene` ``(objects, camera, lights)``.

    Raises:
        RuntimeError: if no valid layout is found in ``MAX_LAYOUTS`` attempts.
    """
    return _sample_scene(
        rng, num_objects, height, width, min_pixels, camera_jitter, light_jitter, min_dist, margin
    )[0]


def _sample_scene(
    rng: np.random.Generator,
    num_objects: int,
    height: int,
    width: int,
    min_pixels: int | None,
    camera_jitter: float,
    light_jitter: float,
    min_dist: float,
    margin: float,
) -> tuple[Scene, _Primary]:
    """:func:`sample_scene`, also returning the accepted layout's pixel-centre hits."""
    if not 0 <= num_objects <= 255:
        raise ValueError(f"num_objects must be in 0..255, got {num_objects}")
    if min_pixels is None:
        min_pixels = min_pixels_for(height, width)
    camera = clevr_camera(rng, camera_jitter)
    lights = clevr_lights(rng, light_jitter)
    directions = _ground_directions(camera)
    rays = camera.rays(*_pixel_grid(height, width), height, width)  # shared by all layouts
    batch, attempts = FIRST_LAYOUT_BATCH, 0
    while attempts < MAX_LAYOUTS:
        attempts += batch
        layouts = _place_objects(rng, num_objects, directions, min_dist, margin, batch)
        batch = min(2 * batch, LAYOUT_BATCH)
        for objects in layouts:
            primary = _primary_hits(objects, camera, height, width, rays)
            counts = np.bincount(primary.ids, minlength=num_objects + 1)
            if num_objects == 0 or counts[1:].min() >= min_pixels:
                return Scene(tuple(objects), camera, lights), primary
    raise RuntimeError(f"no valid layout of {num_objects} objects in {MAX_LAYOUTS} attempts")


# ----------------------------------------------------------------------------------------
# Datasets


def scene_factors(
    scene: Scene, max_objects: int, height: int = HEIGHT, width: int = WIDTH
) -> dict[str, np.ndarray]:
    """Per-entity factors in the official ``clevr_with_masks`` layout.

    Entry 0 is the background, entries 1..N the objects in label order, the rest padding.

    Args:
        scene: the scene.
        max_objects: padding length minus one (E = max_objects + 1 entries).
        height: image height, for ``pixel_coords``.
        width: image width, for ``pixel_coords``.

    Returns:
        Dict of NumPy arrays:
        ``shape``, ``size``, ``color``, ``material``: (E,) int64 indices into
        :data:`SHAPES` (0 sphere, 1 cube, 2 cylinder), :data:`SIZES` (0 small, 1 large),
        :data:`COLORS`, :data:`MATERIALS` (0 rubber, 1 metal); -1 for background and padding.
        ``x``, ``y``, ``z``: (E,) float32 object centre in world units (0 if absent).
        ``rotation``: (E,) float32 degrees about the vertical axis in [0, 360).
        ``pixel_coords``: (E, 3) float32 projected centre (column, row in pixels, pixel
        centres at half-integers) and depth along the optical axis in world units.
        ``visibility``: (E,) float32, 1 for the background and each object, 0 for padding.
    """
    objects = scene.objects
    if len(objects) > max_objects:
        raise ValueError(f"{len(objects)} objects exceed max_objects={max_objects}")
    e = max_objects + 1
    out: dict[str, np.ndarray] = {
        key: np.full(e, -1, np.int64) for key in ("shape", "size", "color", "material")
    }
    for key in ("x", "y", "z", "rotation", "visibility"):
        out[key] = np.zeros(e, np.float32)
    out["pixel_coords"] = np.zeros((e, 3), np.float32)
    out["visibility"][: len(objects) + 1] = 1.0
    for k, obj in enumerate(objects, start=1):
        out["shape"][k], out["size"][k] = obj.shape, obj.size
        out["color"][k], out["material"][k] = obj.color, obj.material
        out["x"][k], out["y"][k], out["z"][k] = obj.position
        out["rotation"][k] = obj.rotation
    if objects:
        centres = np.array([o.position for o in objects])
        out["pixel_coords"][1 : len(objects) + 1] = scene.camera.project(centres, height, width)
    return out


_SAMPLE_DEFAULTS = {
    "min_pixels": None,
    "camera_jitter": 0.5,
    "light_jitter": 1.0,
    "min_dist": MIN_DIST,
    "margin": MARGIN,
}


def generate(
    num_examples: int,
    seed: int,
    min_objects: int = 3,
    max_objects: int = 6,
    start: int = 0,
    **kwargs,
) -> Iterator[dict]:
    """Yield CLEVR-like examples, deterministically.

    Example ``i`` depends only on ``(seed, i)`` (its own ``SeedSequence([seed, i])``), so a
    prefix of a longer run equals a shorter run and ranges can be made in parallel.

    Args:
        num_examples: how many examples to yield.
        seed: base seed.
        start: index of the first example (examples ``start .. start + num_examples - 1``).
        min_objects: least objects per scene (inclusive).
        max_objects: most objects per scene (inclusive); also the factor padding length - 1.
        **kwargs: ``height``, ``width`` (default 240, 320), ``antialias`` (default True), and
            any other :func:`sample_scene` keyword (``min_pixels``, ``camera_jitter``, ...).

    Yields:
        Dicts with ``image`` (H, W, 3) uint8, ``mask`` (H, W) uint8 label map (0 background,
        1..N objects) and ``factors`` (see :func:`scene_factors`). The object count is
        uniform in ``[min_objects, max_objects]``.
    """
    if not 0 <= min_objects <= max_objects <= 255:
        raise ValueError(
            f"need 0 <= min_objects <= max_objects <= 255, got {min_objects}, {max_objects}"
        )
    unknown = set(kwargs) - set(_SAMPLE_DEFAULTS) - {"height", "width", "antialias"}
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    height = kwargs.pop("height", HEIGHT)
    width = kwargs.pop("width", WIDTH)
    antialias = kwargs.pop("antialias", True)
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    for i in range(start, start + num_examples):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        n = int(rng.integers(min_objects, max_objects + 1))
        options = {**_SAMPLE_DEFAULTS, **kwargs}
        scene, primary = _sample_scene(rng, n, height, width, **options)
        image, mask = _render(*scene, height, width, antialias, primary)
        yield {
            "image": np.round(image * 255.0).astype(np.uint8),
            "mask": mask,
            "factors": scene_factors(scene, max_objects, height, width),
        }
