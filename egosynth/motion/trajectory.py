"""The egocentric motion model: a person walking between goals and looking around.

Body: walk to random goals along smoothed shortest paths (FloorPlan) with a trapezoidal speed
profile (cruise speed drawn from the configured range, bounded acceleration), pause at some
goals, and bob vertically once per step. Gaze: at Poisson-distributed times the observer picks
a new target (an object to fixate, the path ahead, or a random look-around direction) and shifts
to it with a minimum-jerk, saccade-like profile; a rate limiter bounds head angular speed.
The eyes are fixed in the head; with "verging" eyes each eye also turns onto the fixation point.

All randomness comes from one numpy Generator seeded by the caller: same seed, same bytes.
Poses are OpenCV camera-to-world (x right, y down, z forward), metres, world +Z up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

from egosynth.config import MotionConfig, RigConfig, SceneConfig
from egosynth.motion.floorplan import FloorPlan

LOOK_AHEAD_DISTANCE_M = 3.0  # where "looking ahead / around" puts the fixation point
FIXATION_SETTLED_DEG = 3.0  # gaze within this of an object counts as fixating it
PITCH_LIMITS_DEG = (-60.0, 45.0)
GAZE_AHEAD, GAZE_SCAN, GAZE_OBJECT = 0, 1, 2


@dataclass
class Trajectory:
    """Per-frame poses of one clip. T frames; eye index 0 = left, 1 = right."""

    time: NDArray[np.float64]  # (T,) seconds from clip start
    head_to_world: NDArray[np.float64]  # (T, 4, 4) cyclopean head frame, OpenCV axes
    eye_to_world: NDArray[np.float64]  # (T, 2, 4, 4) OpenCV camera-to-world
    fixation_point: NDArray[np.float64]  # (T, 3) where the eyes point
    fixation_object: NDArray[np.int32]  # (T,) object index fixated, -1 when none / in transit
    gaze_kind: NDArray[np.int8]  # (T,) 0 ahead, 1 look-around, 2 object
    walking: NDArray[np.bool_]  # (T,) True while walking, False while paused

    def arrays(self) -> dict[str, NDArray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __len__(self) -> int:
        return len(self.time)


# ------------------------------------------------------------------------ body (walking)
@dataclass
class _Segment:
    t0: float
    duration: float
    path: NDArray[np.float64]  # (N, 2); a pause has N == 1
    cruise: float

    def arc_length(self, t: NDArray) -> tuple[NDArray, NDArray]:
        """(s, speed) at times t (relative to t0) of a trapezoidal speed profile."""
        L = _length(self.path)
        v, T = self.cruise, self.duration
        if L == 0.0 or T == 0.0:
            return np.zeros_like(t), np.zeros_like(t)
        ta = min(T / 2, v / self._accel)
        a = v / ta
        t = np.clip(t, 0.0, T)
        s_acc = 0.5 * a * t**2
        s_cru = 0.5 * a * ta**2 + v * (t - ta)
        td = T - t
        s_dec = L - 0.5 * a * td**2
        s = np.where(t < ta, s_acc, np.where(t > T - ta, s_dec, s_cru))
        speed = np.where(t < ta, a * t, np.where(t > T - ta, a * td, v))
        return np.clip(s, 0.0, L), speed

    _accel: float = 1.0


def _length(path: NDArray) -> float:
    return float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum()) if len(path) > 1 else 0.0


def _trapezoid(L: float, v: float, a: float) -> tuple[float, float]:
    """Duration and cruise speed covering L metres from rest to rest."""
    if L <= 0:
        return 0.0, 0.0
    if v * v / a > L:  # too short to reach cruise speed: triangular profile
        v = math.sqrt(a * L)
        return 2 * v / a, v
    return L / v + v / a, v


def _point_along(path: NDArray, s: NDArray) -> tuple[NDArray, NDArray]:
    """Positions (K, 2) and unit tangents (K, 2) at arc lengths s along a polyline."""
    seg = np.diff(path, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    idx = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
    frac = np.where(seg_len[idx] > 0, (s - cum[idx]) / np.maximum(seg_len[idx], 1e-12), 0.0)
    pos = path[idx] + seg[idx] * frac[:, None]
    tangent = seg[idx] / np.maximum(seg_len[idx], 1e-12)[:, None]
    return pos, tangent


def _plan_body(
    plan: FloorPlan, motion: MotionConfig, duration: float, rng: np.random.Generator
) -> list[_Segment]:
    segments: list[_Segment] = []
    pos = plan.sample_point(rng)
    t = 0.0
    while t < duration:
        if segments and rng.random() < motion.pause_probability:
            d = float(rng.uniform(*motion.pause_seconds))
            segments.append(_Segment(t, d, pos[None].copy(), 0.0))
            t += d
            continue
        goal = _pick_goal(plan, pos, motion.min_goal_distance_m, rng)
        path = plan.smooth_path(plan.shortest_path(pos, goal))
        v = float(rng.uniform(*motion.walk_speed_mps))
        d, v = _trapezoid(_length(path), v, motion.accel_mps2)
        if d <= 0.0:  # unreachable or no distance: stand still briefly
            path, d, v = pos[None].copy(), float(motion.pause_seconds[0]), 0.0
        seg = _Segment(t, d, path, v)
        seg._accel = motion.accel_mps2
        segments.append(seg)
        pos = path[-1]
        t += d
    return segments


def _pick_goal(plan: FloorPlan, pos: NDArray, min_dist: float, rng: np.random.Generator) -> NDArray:
    best, best_d = pos, -1.0
    for _ in range(30):
        g = plan.sample_point(rng)
        d = float(np.linalg.norm(g - pos))
        if d >= min_dist:
            return g
        if d > best_d:
            best, best_d = g, d
    return best


def _body_at(segments: list[_Segment], t: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """Head xy (T, 2), horizontal speed (T,), travel heading in radians (T,) at times t."""
    xy = np.zeros((len(t), 2))
    speed = np.zeros(len(t))
    heading = np.full(len(t), np.nan)
    starts = np.array([s.t0 for s in segments])
    which = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(segments) - 1)
    for k, seg in enumerate(segments):
        m = which == k
        if not m.any():
            continue
        if len(seg.path) == 1:
            xy[m] = seg.path[0]
            continue
        s, v = seg.arc_length(t[m] - seg.t0)
        p, tan = _point_along(seg.path, s)
        xy[m], speed[m] = p, v
        heading[m] = np.arctan2(tan[:, 1], tan[:, 0])
    # While paused, keep facing the way the walker last travelled.
    first = next((h for h in heading if np.isfinite(h)), 0.0)
    last = first
    for i in range(len(heading)):
        if np.isfinite(heading[i]):
            last = heading[i]
        heading[i] = last
    return xy, speed, heading


# ------------------------------------------------------------------------ gaze
def _yaw_pitch(vec: NDArray) -> tuple[float, float]:
    return math.atan2(vec[1], vec[0]), math.atan2(vec[2], math.hypot(vec[0], vec[1]))


def _forward(yaw: NDArray, pitch: NDArray) -> NDArray:
    cp = np.cos(pitch)
    return np.stack([cp * np.cos(yaw), cp * np.sin(yaw), np.sin(pitch)], axis=-1)


def _min_jerk(x: NDArray) -> NDArray:
    x = np.clip(x, 0.0, 1.0)
    return x**3 * (10 - 15 * x + 6 * x**2)


def _wrap(a: NDArray | float) -> NDArray | float:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def _choose_targets(
    scene: SceneConfig, motion: MotionConfig, times: NDArray, rng: np.random.Generator
) -> list[tuple[float, int, int, float, float]]:
    """Gaze events (time, kind, object index, yaw offset, pitch) drawn as a Poisson process."""
    events = [(0.0, GAZE_AHEAD, -1, 0.0, math.radians(motion.look_ahead_pitch_deg))]
    rate = motion.gaze_shift_rate_hz
    t = 0.0
    while rate > 0:
        t += float(rng.exponential(1.0 / rate))
        if t >= times[-1] + 1e-9:
            break
        u = rng.random()
        if u < motion.object_fixation_probability and scene.objects:
            events.append((t, GAZE_OBJECT, int(rng.integers(len(scene.objects))), 0.0, 0.0))
        elif u < motion.object_fixation_probability + motion.look_ahead_probability:
            events.append((t, GAZE_AHEAD, -1, 0.0, math.radians(motion.look_ahead_pitch_deg)))
        else:
            dyaw = math.radians(rng.uniform(-motion.scan_yaw_deg, motion.scan_yaw_deg))
            dp = rng.uniform(-motion.scan_pitch_deg, motion.scan_pitch_deg)
            pitch = math.radians(0.5 * motion.look_ahead_pitch_deg + dp)
            events.append((t, GAZE_SCAN, -1, dyaw, pitch))
    return events


def _gaze(
    scene: SceneConfig,
    motion: MotionConfig,
    times: NDArray,
    head: NDArray,
    heading: NDArray,
    rng: np.random.Generator,
) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """Head yaw, pitch (rad), gaze kind and object index per frame."""
    centers = np.array([o.center for o in scene.objects]).reshape(-1, 3)
    events = _choose_targets(scene, motion, times, rng)
    ev_t = np.array([e[0] for e in events])
    which = np.searchsorted(ev_t, times, side="right") - 1
    lo, hi = (math.radians(x) for x in PITCH_LIMITS_DEG)
    # Desired direction of each frame's current target.
    des_yaw = np.empty(len(times))
    des_pitch = np.empty(len(times))
    kind = np.empty(len(times), np.int8)
    obj = np.full(len(times), -1, np.int32)
    for i, k in enumerate(which):
        _, kd, oi, dyaw, pitch = events[k]
        kind[i] = kd
        if kd == GAZE_OBJECT:
            obj[i] = oi
            des_yaw[i], des_pitch[i] = _yaw_pitch(centers[oi] - head[i])
        else:
            des_yaw[i], des_pitch[i] = heading[i] + dyaw, pitch
    des_pitch = np.clip(des_pitch, lo, hi)
    # Saccade-like shift: blend from the previous target with a minimum-jerk profile whose
    # peak speed (1.875 x amplitude / duration) stays under the head speed bound.
    w_max = math.radians(motion.max_head_speed_dps)
    yaw_d, pitch_d = des_yaw.copy(), des_pitch.copy()
    for i in range(1, len(times)):
        k = which[i]
        if k == 0:
            continue
        j0 = int(np.searchsorted(times, ev_t[k]))  # first frame of this event
        if j0 == 0:
            continue
        prev_yaw, prev_pitch = yaw_d[j0 - 1], pitch_d[j0 - 1]
        dyaw = _wrap(des_yaw[i] - prev_yaw)
        dpitch = des_pitch[i] - prev_pitch
        amp = abs(dyaw) + abs(dpitch)
        dur = max(0.05, 1.875 * amp / (0.8 * w_max))
        s = _min_jerk((times[i] - ev_t[k]) / dur)
        yaw_d[i] = prev_yaw + s * dyaw if s < 1 else des_yaw[i]
        pitch_d[i] = prev_pitch + s * dpitch
    # Rate limiter: the rotation between frames is at most |dyaw| + |dpitch| (roll is 0), so
    # bounding that L1 step bounds the head's angular speed exactly.
    yaw, pitch = np.empty_like(yaw_d), np.empty_like(pitch_d)
    yaw[0], pitch[0] = yaw_d[0], pitch_d[0]
    dt = np.diff(times, prepend=times[0])
    for i in range(1, len(times)):
        dy, dp = float(_wrap(yaw_d[i] - yaw[i - 1])), pitch_d[i] - pitch[i - 1]
        step = abs(dy) + abs(dp)
        cap = w_max * dt[i]
        scale = 1.0 if step <= cap else cap / step
        yaw[i] = float(_wrap(yaw[i - 1] + scale * dy))
        pitch[i] = pitch[i - 1] + scale * dp
    return yaw, pitch, kind, obj


# ------------------------------------------------------------------------ assembly
def _frame(fwd: NDArray, origin: NDArray) -> NDArray:
    """OpenCV camera-to-world (..., 4, 4) with zero roll from forward vectors (..., 3)."""
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(fwd, right)
    T = np.zeros((*fwd.shape[:-1], 4, 4))
    T[..., :3, 0], T[..., :3, 1], T[..., :3, 2], T[..., :3, 3] = right, down, fwd, origin
    T[..., 3, 3] = 1.0
    return T


def generate_trajectory(
    scene: SceneConfig,
    rig: RigConfig,
    motion: MotionConfig,
    n_frames: int,
    fps: float,
    seed: int | np.random.SeedSequence,
) -> Trajectory:
    """Generate `n_frames` frames at `fps` of an observer walking and looking in `scene`."""
    rng = np.random.default_rng(seed)
    plan = FloorPlan(scene.floor, [o.polygon for o in scene.obstacles], motion.clearance_m)
    times = np.arange(n_frames, dtype=np.float64) / fps
    body = _plan_body(plan, motion, float(times[-1]) + 1.0 / fps, rng)
    xy, speed, heading = _body_at(body, times)

    # Vertical bob: one cycle per step; step rate scales with speed, amplitude fades to 0 at rest.
    v_nominal = float(np.mean(motion.walk_speed_mps))
    dt = 1.0 / fps
    phase = np.cumsum(motion.step_frequency_hz * speed / v_nominal * dt)
    gain = np.clip(speed / motion.walk_speed_mps[0], 0.0, 1.0)
    z = rig.eye_height_m + motion.bob_amplitude_m * gain * np.sin(2 * np.pi * phase)
    head_pos = np.column_stack([xy, z])

    yaw, pitch, kind, obj = _gaze(scene, motion, times, head_pos, heading, rng)
    fwd = _forward(yaw, pitch)
    head = _frame(fwd, head_pos)
    right = head[:, :3, 0]

    # Fixation point: the fixated object's centre once gaze has settled on it, otherwise a
    # point ahead along the line of sight.
    fix_obj = np.full(n_frames, -1, np.int32)
    fix = head_pos + LOOK_AHEAD_DISTANCE_M * fwd
    if scene.objects:
        centers = np.array([o.center for o in scene.objects])
        m = obj >= 0
        to_obj = centers[np.maximum(obj, 0)] - head_pos
        dist = np.linalg.norm(to_obj, axis=1)
        cosang = np.einsum("ij,ij->i", to_obj, fwd) / np.maximum(dist, 1e-9)
        settled = m & (cosang >= math.cos(math.radians(FIXATION_SETTLED_DEG)))
        fix_obj[settled] = obj[settled]
        fix[settled] = centers[obj[settled]]
        # Verging eyes converge at the target's distance along the line of sight.
        fix[m & ~settled] = head_pos[m & ~settled] + dist[m & ~settled, None] * fwd[m & ~settled]

    half = 0.5 * rig.ipd_m * right
    eye_pos = np.stack([head_pos - half, head_pos + half], axis=1)  # (T, 2, 3): left, right
    if rig.eyes == "verging":
        eye_fwd = fix[:, None, :] - eye_pos
        eye_fwd /= np.linalg.norm(eye_fwd, axis=-1, keepdims=True)
    else:
        eye_fwd = np.repeat(fwd[:, None, :], 2, axis=1)
    eyes = _frame(eye_fwd, eye_pos)
    return Trajectory(
        time=times,
        head_to_world=head,
        eye_to_world=eyes,
        fixation_point=fix,
        fixation_object=fix_obj,
        gaze_kind=kind,
        walking=speed > 0,
    )
