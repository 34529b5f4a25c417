"""lib.prepare.generators.clevr_geometry, imported directly: the camera basis, rays and
projection against values worked out by hand, and the ray-primitive intersections and normals
against hand-solved cases and a per-ray loop that solves every candidate surface separately."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lib.prepare.generators.clevr_geometry import (
    Camera,
    intersect_box,
    intersect_cylinder,
    intersect_sphere,
    normal_box,
    normal_cylinder,
    normal_sphere,
    rotation_z,
    to_local,
)


def _rays(origins, directions):
    """Rays as the module takes them: (ox, oy, oz, dx, dy, dz), unit float32 directions."""
    o = np.asarray(origins, np.float32).reshape(-1, 3)
    d = np.asarray(directions, np.float64).reshape(-1, 3)
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    o = np.broadcast_to(o, d.shape)
    return tuple(np.ascontiguousarray(o[:, k]) for k in range(3)) + tuple(
        np.ascontiguousarray(d[:, k]) for k in range(3)
    )


def test_camera_basis_by_hand():
    # Looking along +y from (0, -5, 1): right = +x, up = +z, forward = +y.
    side = Camera((0.0, -5.0, 1.0), (0.0, 0.0, 1.0))
    np.testing.assert_allclose(side.basis(), [[1, 0, 0], [0, 0, 1], [0, 1, 0]], atol=1e-12)
    # Straight down: the horizon is undefined, world +y is taken as up.
    top = Camera((0.0, 0.0, 5.0), (0.0, 0.0, 0.0))
    np.testing.assert_allclose(top.basis(), [[1, 0, 0], [0, 1, 0], [0, 0, -1]], atol=1e-12)


def test_clevr_camera_basis_is_level_and_orthonormal():
    cam = Camera()
    right, up, forward = cam.basis()
    position = np.array([7.48113, -6.50764, 5.34367])
    np.testing.assert_allclose(forward, -position / np.linalg.norm(position), atol=1e-12)
    assert abs(right[2]) < 1e-12  # the horizon stays level
    np.testing.assert_allclose(cam.basis() @ cam.basis().T, np.eye(3), atol=1e-12)
    assert np.linalg.det(cam.basis()) == pytest.approx(-1.0)  # right, up, forward: left-handed
    assert up[2] > 0
    # Horizontal field of view 2 atan(16 / 35): a 64-pixel image has f = 64 * 35 / 32 = 70.
    assert cam.focal_pixels(64) == 70.0


def test_rays_by_hand():
    cam = Camera((0.0, -5.0, 0.0), (0.0, 0.0, 0.0))  # right +x, up +z, forward +y
    rows = np.array([0.5, 32.0, 10.0])
    cols = np.array([0.5, 32.0, 50.0])
    ox, oy, oz, dx, dy, dz = cam.rays(rows, cols, 64, 64)
    assert (ox, oy, oz) == (0.0, -5.0, 0.0)
    assert dx.dtype == np.float32
    f = 70.0
    for k, (r, c) in enumerate(zip(rows, cols)):
        u, v = (c - 32.0) / f, (32.0 - r) / f
        expected = np.array([u, 1.0, v]) / math.sqrt(u * u + v * v + 1.0)
        np.testing.assert_allclose([dx[k], dy[k], dz[k]], expected, atol=1e-6)
    np.testing.assert_allclose([dx[1], dy[1], dz[1]], [0, 1, 0], atol=1e-7)  # image centre


def test_project_inverts_rays():
    cam = Camera()
    rows = np.array([3.5, 20.25, 47.0])
    cols = np.array([60.5, 11.0, 33.75])
    ox, oy, oz, dx, dy, dz = cam.rays(rows, cols, 48, 64)
    distance = np.array([2.0, 9.0, 14.0])
    points = np.stack([ox + distance * dx, oy + distance * dy, oz + distance * dz], axis=1)
    projected = cam.project(points, 48, 64)
    np.testing.assert_allclose(projected[:, 0], cols, atol=1e-4)
    np.testing.assert_allclose(projected[:, 1], rows, atol=1e-4)
    # Depth along the optical axis: distance times cos(angle to the axis).
    cos = np.stack([dx, dy, dz], axis=1) @ cam.basis()[2]
    np.testing.assert_allclose(projected[:, 2], distance * cos, rtol=1e-6)


def test_rotation_z_by_hand():
    np.testing.assert_allclose(rotation_z(90.0), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    np.testing.assert_allclose(rotation_z(30.0) @ [1, 0, 0], [c, s, 0], atol=1e-12)


@pytest.mark.parametrize("degrees", [0.0, 37.0, 90.0, -120.0])
def test_to_local_is_the_inverse_rigid_motion(degrees):
    rng = np.random.default_rng(0)
    origins = rng.normal(size=(6, 3)).astype(np.float32)
    rays = _rays(origins, rng.normal(size=(6, 3)))
    center = np.array([0.5, -1.25, 0.35])
    rot = rotation_z(degrees)
    local = np.stack(to_local(rays, center, rot), axis=1)
    world_o = np.stack(rays[:3], axis=1).astype(np.float64)
    world_d = np.stack(rays[3:], axis=1).astype(np.float64)
    # Explicit matrix products: local = R^T (p - c) for points, R^T d for directions.
    np.testing.assert_allclose(local[:, :3], (world_o - center) @ rot, atol=1e-5)
    np.testing.assert_allclose(local[:, 3:], world_d @ rot, atol=1e-6)
    # Without a rotation only the translation applies.
    plain = np.stack(to_local(rays, center, None), axis=1)
    np.testing.assert_allclose(plain[:, :3], world_o - center, atol=1e-6)
    np.testing.assert_allclose(plain[:, 3:], world_d, atol=0)


def test_sphere_hits_by_hand():
    # From z = -5 towards +z: entry at 5 - sqrt(r^2 - x^2) for an offset x; a miss beyond r;
    # a sphere behind the origin is not hit.
    rays = _rays(
        [[0, 0, -5], [0.6, 0, -5], [1.1, 0, -5], [0, 0, -5]],
        [[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, -1]],
    )
    t = intersect_sphere(rays, 1.0)
    np.testing.assert_allclose(t[:2], [4.0, 4.2], atol=1e-5)
    assert np.isinf(t[2]) and np.isinf(t[3])


def test_box_hits_by_hand():
    s2 = math.sqrt(2.0)
    rays = _rays(
        [[0, 0, -5], [0.5, -0.5, -5], [2, 0, -5], [-5, -5, 0.5], [-5, 0, 0]],
        [[0, 0, 1], [0, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0.5, 0]],
    )
    t = intersect_box(rays, 1.0)
    # Face z = -1 at distance 4; the diagonal ray reaches the edge x = y = -1 after 4 sqrt 2;
    # the last one enters x = -1 at t = 4 / cos(atan(0.5)), where y = 2 is outside: a miss.
    np.testing.assert_allclose(t[[0, 1, 3]], [4.0, 4.0, 4 * s2], atol=1e-5)
    assert np.isinf(t[2]) and np.isinf(t[4])


def test_cylinder_hits_by_hand():
    rays = _rays(
        [[-5, 0, 0], [-5, 0, 0.9], [0.2, 0.3, 5], [0, 0, -5], [-5, 0, 1.5]],
        [[1, 0, 0], [1, 0, 0], [0, 0, -1], [0, 0, 1], [1, 0, 0]],
    )
    t = intersect_cylinder(rays, 0.5, 1.0)
    # Side at x = -0.5 (4.5 away), the top cap from above (4), the bottom cap from below (4),
    # and a miss above the top.
    np.testing.assert_allclose(t[:4], [4.5, 4.5, 4.0, 4.0], atol=1e-5)
    assert np.isinf(t[4])


def _first_hit_loop(o, d, surfaces) -> float:
    """Nearest t > 1e-4 over candidate surfaces, each (t list, on-surface test), for one ray."""
    best = math.inf
    for ts, on_surface in surfaces(o, d):
        for t in ts:
            if t > 1e-4 and on_surface(o + t * d) and t < best:
                best = t
    return best


def _box_surfaces(half):
    def surfaces(o, d):
        for axis in range(3):
            if d[axis] == 0:
                continue
            others = [a for a in range(3) if a != axis]
            for plane in (-half, half):
                t = (plane - o[axis]) / d[axis]
                yield [t], lambda p, others=others: all(abs(p[a]) <= half + 1e-6 for a in others)

    return surfaces


def _sphere_surfaces(radius):
    def surfaces(o, d):
        roots = np.roots([d @ d, 2 * (o @ d), o @ o - radius**2])
        yield [r.real for r in roots if abs(r.imag) < 1e-12], lambda p: True

    return surfaces


def _cylinder_surfaces(radius, half):
    def surfaces(o, d):
        a, b = d[0] ** 2 + d[1] ** 2, 2 * (o[0] * d[0] + o[1] * d[1])
        roots = np.roots([a, b, o[0] ** 2 + o[1] ** 2 - radius**2]) if a > 0 else []
        yield [r.real for r in roots if abs(r.imag) < 1e-12], lambda p: abs(p[2]) <= half
        if d[2] != 0:
            caps = [(z - o[2]) / d[2] for z in (-half, half)]
            yield caps, lambda p: p[0] ** 2 + p[1] ** 2 <= radius**2

    return surfaces


@pytest.mark.parametrize(
    "name, intersect, surfaces",
    [
        ("sphere", lambda r: intersect_sphere(r, 0.7), _sphere_surfaces(0.7)),
        ("box", lambda r: intersect_box(r, 0.6), _box_surfaces(0.6)),
        ("cylinder", lambda r: intersect_cylinder(r, 0.5, 0.8), _cylinder_surfaces(0.5, 0.8)),
    ],
)
def test_intersections_match_a_per_ray_loop(name, intersect, surfaces):
    # Rays from outside every primitive (distance 3) aimed near the origin: hits and misses.
    rng = np.random.default_rng(1)
    n = 64
    start = rng.normal(size=(n, 3))
    start = 3.0 * start / np.linalg.norm(start, axis=1, keepdims=True)
    target = rng.uniform(-1.0, 1.0, size=(n, 3))
    rays = _rays(start, target - start)
    t = intersect(rays)
    o_all = np.stack(rays[:3], axis=1).astype(np.float64)
    d_all = np.stack(rays[3:], axis=1).astype(np.float64)
    expected = np.array([_first_hit_loop(o, d, surfaces) for o, d in zip(o_all, d_all)])
    hits = np.isfinite(expected)
    assert 10 < hits.sum() < n, name  # both hits and misses are exercised
    np.testing.assert_array_equal(np.isfinite(t), hits)
    np.testing.assert_allclose(t[hits], expected[hits], atol=1e-4)


def test_normals_by_hand():
    nx, ny, nz = normal_sphere(
        np.array([0.0, 0.6]), np.array([0.0, 0.0]), np.array([2.0, 1.6]), 2.0
    )
    np.testing.assert_allclose(np.stack([nx, ny, nz], 1), [[0, 0, 1], [0.3, 0, 0.8]])
    # The face is that of the largest |coordinate|, whatever the edge length.
    px = np.array([1.0, 0.1, -0.3, 0.2])
    py = np.array([0.3, -1.0, 0.2, 0.4])
    pz = np.array([-0.2, 0.5, 0.1, -1.0])
    np.testing.assert_array_equal(
        np.stack(normal_box(px, py, pz), 1), [[1, 0, 0], [0, -1, 0], [-1, 0, 0], [0, 0, -1]]
    )
    # A side point at angle a has normal (cos a, sin a, 0); cap points have (0, 0, +-1).
    a = np.array([0.3, 2.0])
    px = np.concatenate([0.5 * np.cos(a), [0.1, -0.2]])
    py = np.concatenate([0.5 * np.sin(a), [0.2, 0.1]])
    pz = np.array([0.2, -0.7, 0.8, -0.8])
    normals = np.stack(normal_cylinder(px, py, pz, 0.5, 0.8), 1)
    expected = [[math.cos(0.3), math.sin(0.3), 0], [math.cos(2.0), math.sin(2.0), 0]]
    np.testing.assert_allclose(normals, [*expected, [0, 0, 1], [0, 0, -1]], atol=1e-12)
