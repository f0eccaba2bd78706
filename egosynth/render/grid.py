"""A bundle's bake, ready to render: marching rays through the density grid, baked colour.

Guided and baked rendering (docs/nerf_modes.md) both march each ray through `samples`
uniform bins from the near plane to where it leaves the grid box, with nerfstudio's alpha
compositing on the baked ln(density). The march gives accumulation, nerfstudio's median depth
and GUIDED_FIELD_SAMPLES distances at equal steps of the cumulative weight (the quantiles),
where colour is read: from the field (guided) or from the baked colour table (baked).

Two implementations of the same march: `BakedGrid` here, whole-tensor torch (the reference,
and the GPU path), and egosynth.render.march, one compiled loop per ray (the CPU path, several
times faster: it stops at opaque surfaces and never builds (rays x bins) temporaries). Tests
hold them to float tolerance.

The colour table: the bake stores colours only at grid points the bake's probe rays saw;
rendering fills FILL_STEPS more layers around them from their seen neighbours (so a new view
rarely needs the field) and weights every colour by how opaque the field is at its point, so a
look-up between a surface point and a point in the air in front of it reads the surface's
colour (room_1, 4 views: +0.2 dB against the ground truth; measured in docs/nerf_modes.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from numpy.typing import NDArray

# Bins per ray of the grid march, and colour samples per ray (at the weights' quantiles).
# 4 views 128x96 of room_1 (baked vs the ground truth; full 27.52 dB): see docs/nerf_modes.md.
GUIDED_GRID_SAMPLES = 96
GUIDED_FIELD_SAMPLES = 6
# Light the grid leaves at its box's far side: above ESCAPE_SAMPLE_MIN it gets the colour at the
# box exit (nerfacto gives it its last sample's colour); above GUIDED_MAX_ESCAPE the ray sees
# mostly past the baked region (sky, far background) and falls back to full sampling. CPU fits
# are foggy: ~20 % of room_0's light leaks through its soft walls. room_1, 4 views: 181 of
# 49 152 rays leave 50-56 % of their light through a thin patch of wall; at 0.5 they were
# rendered full (a quarter of baked's time), at 0.75 with the exit colour: 0.14 dB further
# from full, 0.04 dB closer to the ground truth.
ESCAPE_SAMPLE_MIN = 0.01
GUIDED_MAX_ESCAPE = 0.75
# Baked: a colour sample whose trilinear neighbourhood holds less than this share of coloured
# table points sends its ray to guided.
BAKED_MIN_KNOWN = 0.25
# The colour table (module docstring): layers filled around the seen points, and the weight of
# a colour: opacity of the field over CONFIDENCE_DEPTH colour-grid spacings, plus a floor.
FILL_STEPS = 8
CONFIDENCE_DEPTH = 4.0
CONFIDENCE_FLOOR = 0.05
KERNELS = ("numba", "torch")


@dataclasses.dataclass
class March:
    """One march of rays through the density grid (see BakedGrid.march)."""

    acc: Any  # (n,) accumulation
    depth: Any  # (n, 1) nerfstudio's median depth (linear inside its bin)
    t_colour: Any  # (n, K) the weights' quantiles: where colour is read
    t_exit: Any  # (n,) where each ray leaves the grid box
    far: Any  # (n,) rays whose light partly escapes past the box (they get the exit colour)
    ok: Any  # (n,) rays the grid can answer
    mid: Any = None  # (n, S) bin centres (torch path only)
    w: Any = None  # (n, S) compositing weights (torch path only)

    def composite(self, c: Any, rest: Any, weight: Any = None) -> dict[str, Any]:
        """Colour samples c (n, K, 3) with equal weight mass each, or with relative weights
        `weight` (n, K); `rest` for the light left at the box exit."""
        if weight is None:
            mean = c.mean(1)
        else:
            total = weight.sum(1, keepdim=True)
            mean = (c * weight[..., None]).sum(1) / total.clamp_min(1e-12)
            mean = mean.where(total > 0, c.mean(1))  # no weight at all: equal shares
        rgb = mean * self.acc[:, None] + (1.0 - self.acc)[:, None] * rest
        return {"rgb": rgb, "depth": self.depth, "accumulation": self.acc[:, None]}


def requantize(log_density: NDArray) -> tuple[NDArray[np.uint8], float, float]:
    """The grid as the bake stores it: uint8 over its own range (exact for a read bake, whose
    values lie on that lattice), and the range's low end and step."""
    ld = np.asarray(log_density, np.float32)
    lo, hi = float(ld.min()), float(ld.max())
    step = max(hi - lo, 1e-6) / 255.0
    return np.round((ld - lo) / step).clip(0, 255).astype(np.uint8), lo, step


def colour_table(baked: Any, density_q: NDArray[np.uint8], ld_lo: float, ld_step: float) -> NDArray:
    """The (C, C, C, 4) uint8 table [r, g, b, weight] rendering reads (module docstring);
    weight 0: no colour."""
    from egosynth.render.march import confidence, fill_colour

    mask = baked.mask()
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    rgb[mask] = baked.colour
    for _ in range(FILL_STEPS):
        rgb, mask = fill_colour(rgb, mask)
    size = np.asarray(baked.bounds[1], np.float64) - np.asarray(baked.bounds[0], np.float64)
    spacing = float(size.mean()) / (mask.shape[0] - 1)
    w = confidence(density_q, ld_lo, ld_step, mask, spacing * CONFIDENCE_DEPTH, CONFIDENCE_FLOOR)
    return np.concatenate([rgb, w[..., None]], -1)


class BakedGrid:
    """A bundle's bake as render-ready grids; `kernel` numba (CPU) or torch (any device)."""

    def __init__(
        self, baked: Any, device: str, kernel: str | None = None, dtype: Any = np.float32
    ) -> None:
        """dtype: of the torch path's density volume (the bake's probe marches in float64)."""
        kernel = kernel or ("numba" if device == "cpu" else "torch")
        if kernel not in KERNELS or (kernel == "numba" and device != "cpu"):
            raise ValueError(f"kernel {kernel!r} on {device}: numba runs on the CPU only")
        self.device, self.kernel = device, kernel
        self.bounds = np.asarray(baked.bounds, np.float32)
        self.log_density = np.asarray(baked.log_density, dtype)
        self.density_q, self.ld_lo, self.ld_step = requantize(self.log_density)
        self.table = colour_table(baked, self.density_q, self.ld_lo, self.ld_step)
        self._torch: dict[str, Any] = {}

    # ----------------------------------------------------------------- torch tensors (lazy)
    def _t(self, name: str) -> Any:
        """A tensor of the torch path, built on its first use (each alone: the numba kernels
        need only the box and the density volume, and the colour volume costs ~3 s to build
        on a small CPU)."""
        if name not in self._torch:
            self._torch[name] = self._tensor(name)
        return self._torch[name]

    def _tensor(self, name: str) -> Any:
        import torch

        def volume(a: NDArray) -> Any:  # grid_sample wants (z, y, x) axes
            return torch.from_numpy(np.ascontiguousarray(a)).permute(*range(a.ndim - 3), -1, -2, -3)

        dev = self.device
        if name == "volume":
            return volume(self.log_density)[None, None].contiguous().to(dev)
        if name == "colour":
            t = self.table.astype(np.float32)
            w = t[..., 3:4]
            chans = np.concatenate([t[..., :3] * w / 255.0, w, (w > 0).astype(np.float32)], -1)
            return volume(np.moveaxis(chans, -1, 0))[None].contiguous().to(dev)
        return torch.tensor(self.bounds[("lo", "hi").index(name)], device=dev)

    def to_grid(self, points: Any) -> Any:
        """Model-frame points (..., 3) in grid_sample's [-1, 1] coordinates of the grid box."""
        lo, hi = self._t("lo"), self._t("hi")
        return 2.0 * (points - lo) / (hi - lo) - 1.0

    def sample(self, volume: Any, q: Any) -> Any:
        """Trilinear look-up of the (1, C, z, y, x) `volume` at grid coordinates q (..., 3)
        -> (C, ...)."""
        import torch
        import torch.nn.functional as F

        shape, c = q.shape[:-1], volume.shape[1]
        q = q.reshape(-1, 3)
        n = len(q)
        # On CPU grid_sample parallelises over its batch axis only: one batch per thread
        # (measured 2x on 2 threads); the volume is shared, expanded without a copy.
        k = torch.get_num_threads() if q.device.type == "cpu" and n >= 1 << 15 else 1
        if n % k:
            q = torch.cat([q, q[: k - n % k]])
        out = F.grid_sample(volume.expand(k, -1, -1, -1, -1), q.reshape(k, 1, 1, -1, 3),
                            align_corners=True, padding_mode="border")  # fmt: skip
        out = out.reshape(k, c, -1).transpose(0, 1).reshape(c, -1)
        return out[:, :n].reshape(c, *shape)

    def density(self, points: Any) -> Any:
        """Density at model-frame points (..., 3) by trilinear look-up of ln(density)."""
        import torch

        return torch.exp(self.sample(self._t("volume"), self.to_grid(points))[0])

    def colour(self, points: Any) -> tuple[Any, Any]:
        """Baked colour (..., 3) at points (..., 3) and the share of its look-up's corners
        that hold a colour (...,)."""
        v = self.sample(self._t("colour"), self.to_grid(points))
        rgb = (v[:3] / v[3].clamp_min(1e-9)).clamp_(0.0, 1.0)
        return rgb.movedim(0, -1), v[4]

    def span(self, o: Any, d: Any, near: float) -> tuple[Any, Any, Any]:
        """Where rays run inside the grid box: (t_start, t_end, ok) with ok = origin inside."""
        import torch

        lo, hi = self._t("lo"), self._t("hi")
        inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        t0, t1 = (lo - o) * inv, (hi - o) * inv
        t_in = torch.minimum(t0, t1).amax(-1)
        t_out = torch.maximum(t0, t1).amin(-1)
        t_a = torch.full_like(t_in, near)
        ok = (t_in <= near) & (t_out > near)
        return t_a, torch.where(ok, t_out, t_a + 1.0), ok

    # ----------------------------------------------------------------- marching
    def march(
        self,
        o: Any,
        d: Any,
        near: float,
        samples: int | None = None,
        kernel: str | None = None,
        refine: bool = True,
    ) -> March:
        """`samples` (default GUIDED_GRID_SAMPLES) bins from `near` to the box exit; refine:
        re-read the bins that hold the light finer (always, in the numba kernel)."""
        samples = samples or GUIDED_GRID_SAMPLES
        if (kernel or self.kernel) == "numba":
            return self._numba(o, d, near, samples, with_colour=False)[0]
        return self._torch_march(o, d, near, samples, refine)

    def shade(self, o: Any, d: Any, near: float) -> tuple[dict[str, Any], Any]:
        """Baked rendering of rays: rgb, depth, accumulation, and which rays it can answer
        (the grid can, and every colour look-up found at least BAKED_MIN_KNOWN colour)."""
        if self.kernel == "numba":
            m, rgb, known = self._numba(o, d, near, GUIDED_GRID_SAMPLES, with_colour=True)
            out = {"rgb": rgb, "depth": m.depth, "accumulation": m.acc[:, None]}
            return out, m.ok & (known >= BAKED_MIN_KNOWN)
        m = self._torch_march(o, d, near, GUIDED_GRID_SAMPLES, refine=True)
        c, known = self.colour(o[:, None] + d[:, None] * m.t_colour[..., None])
        rest = c[:, -1].clone()
        if bool(m.far.any()):
            ce, ke = self.colour(o[m.far] + d[m.far] * m.t_exit[m.far, None])
            rest[m.far] = ce.where((ke >= BAKED_MIN_KNOWN)[:, None], rest[m.far])
        return m.composite(c, rest), m.ok & (known.amin(1) >= BAKED_MIN_KNOWN)

    def _torch_march(self, o: Any, d: Any, near: float, samples: int, refine: bool) -> March:
        """egosynth.render.march's rule as whole tensors: a march at the bin centres, the bins
        with >= REFINE_WEIGHT of the light re-read at REFINE_STEPS points, composited again;
        the quantiles are placed linearly inside (sub-)bins."""
        import torch

        from egosynth.render.march import REFINE_STEPS, REFINE_WEIGHT

        t_a, t_b, ok = self.span(o, d, near)
        n, S, KC, R = len(o), samples, GUIDED_FIELD_SAMPLES, REFINE_STEPS if refine else 1
        u = (torch.arange(S, device=o.device, dtype=o.dtype) + 0.5) / S
        length = (t_b - t_a)[:, None]
        mid, step = t_a[:, None] + length * u, length / S  # (n, S) bin centres, bin length
        tau = self._optical_depth(o, d, mid, step)
        w, trans = _composite(tau)
        wf = (w / R)[..., None].expand(n, S, R).clone()  # light inside bins: uniform ...
        if refine:
            rows, bins = (w >= REFINE_WEIGHT).nonzero(as_tuple=True)
            if len(rows):
                ur = (torch.arange(R, device=o.device, dtype=o.dtype) + 0.5) / R
                sub_t = t_a[rows, None] + step[rows] * (bins[:, None] + ur)
                sub = self._optical_depth(o[rows], d[rows], sub_t, step[rows] / R)
                tau = tau.index_put((rows, bins), sub.sum(1))
                w, trans = _composite(tau)
                sw, _ = _composite(sub)  # ... or, in refined bins, as their sub-bins hold it
                wf[rows, bins] = trans[rows, bins, None] * sw
        ok = ok & (trans[:, -1] <= GUIDED_MAX_ESCAPE)
        acc = w.sum(1)
        wf = wf.reshape(n, S * R)
        cw = torch.cumsum(wf, 1)

        def place(q: Any) -> Any:  # where cw reaches q, linear inside the (sub-)bin
            j = torch.searchsorted(cw, q).clamp_(max=S * R - 1)
            wj = wf.gather(1, j)
            f = (q - (cw.gather(1, j) - wj)) / wj.clamp_min(1e-12)
            f = torch.where(wj > 1e-12, f, torch.ones_like(f)).clamp_(0.0, 1.0)
            return t_a[:, None] + step * ((j.to(o.dtype) + f) / R)

        depth = place(torch.full((n, 1), 0.5, device=o.device, dtype=o.dtype))
        q = (torch.arange(KC, device=o.device, dtype=o.dtype) + 0.5) / KC * acc[:, None]
        far = (trans[:, -1] > ESCAPE_SAMPLE_MIN) & ok
        return March(acc, depth, place(q), t_b, far, ok, mid, w)

    def _optical_depth(self, o: Any, d: Any, t: Any, length: Any) -> Any:
        """Density at distances t (n, k) along rays o + t d, times `length` (n, 1)."""
        import torch

        qo, qd = self.to_grid(o), 2.0 * d / (self._t("hi") - self._t("lo"))
        ld = self.sample(self._t("volume"), qo[:, None] + qd[:, None] * t[..., None])[0]
        return torch.exp(ld) * length

    def _numba(
        self, o: Any, d: Any, near: float, samples: int, with_colour: bool
    ) -> tuple[March, Any, Any]:
        import torch

        from egosynth.render.march import march_rays, use_threads

        use_threads(torch.get_num_threads())  # the CPU share torch was given, no more
        # contiguous float32 always: another layout would compile another specialisation
        on = np.ascontiguousarray(o.detach().cpu().numpy(), np.float32)
        dn = np.ascontiguousarray(d.detach().cpu().numpy(), np.float32)
        n, KC = len(on), GUIDED_FIELD_SAMPLES
        rgb, depth, acc = (
            np.zeros((n, 3), np.float32),
            np.empty(n, np.float32),
            np.empty(n, np.float32),
        )
        tc, t_exit = np.empty((n, KC), np.float32), np.empty(n, np.float32)
        flags, known = np.empty(n, np.uint8), np.ones(n, np.float32)
        march_rays(on, dn, float(near), self.density_q, self.ld_lo, self.ld_step,
                   self.bounds[0], self.bounds[1], samples, KC, GUIDED_MAX_ESCAPE,
                   ESCAPE_SAMPLE_MIN, self.table, with_colour, BAKED_MIN_KNOWN,
                   rgb, depth, acc, tc, t_exit, flags, known)  # fmt: skip
        t = torch.from_numpy
        fl = t(flags)
        m = March(t(acc), t(depth)[:, None], t(tc), t(t_exit), (fl & 2) > 0, (fl & 1) > 0)
        return m, t(rgb), t(known)


def _composite(tau: Any) -> tuple[Any, Any]:
    """Weights (n, k) of bins with optical depths tau, and the transmittance ahead of each bin
    and past the last (n, k + 1)."""
    import torch

    alpha = 1.0 - torch.exp(-tau)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha], 1), 1)
    return trans[:, :-1] * alpha, trans


def compile_kernels() -> None:
    """Compile the CPU kernels (render/march.py, render/hashgrid.py) now, on tiny inputs of
    the types rendering passes, so that numba's on-disk cache (`cache=True`, __pycache__)
    holds them. Each process that finds no cache compiles them itself (~16 s of a small CPU);
    processes started after this (Ray actors, pipeline stages, test workers) load them in a
    fraction of a second. Cheap when the cache is current."""
    import torch

    from egosynth.nerf.baked import Baked
    from egosynth.render.hashgrid import hash_encode

    n = 2
    bounds = np.array([[-1.0] * 3, [1.0] * 3], np.float32)
    mask = Baked.pack_mask(np.ones((n, n, n), bool))
    baked = Baked(np.zeros((n, n, n), np.float32), bounds, mask, np.zeros((n**3, 3), np.uint8), n)
    grid = BakedGrid(baked, "cpu", kernel="numba")  # colour_table: fill_colour, confidence
    grid.march(torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]]), 0.01, 4)  # march_rays
    x, table = np.zeros((1, 3), np.float32), np.zeros((4, 2), np.float32)
    hash_encode(x, np.ones(1, np.float32), table, 4, np.empty((1, 2), np.float32))
