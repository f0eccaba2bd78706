"""The training loop: objectives -> one model, AdamW + warmup/cosine, AMP, checkpoints with
exact resume, TensorBoard scalars, a tqdm bar, diagnostics, and DDP under torchrun.

`Trainer(cfg, data, probe).fit()` takes ANY iterable of batches: a dict with "rgb"
(B, T, E, H, W, 3) or (B, T, E, 3, H, W) uint8 (or a bare tensor of that). Exact resume needs
the iterable to replay the same batches: the loop records (epoch, batches consumed in the
epoch), calls `set_epoch(epoch)` when the iterable has it, and on resume skips the batches
already consumed (or calls `load_state_dict` when the iterable has `state_dict`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from egosynth.errors import EgosynthError
from egosynth.train import checkpoint as ckpt
from egosynth.train.config import TrainConfig
from egosynth.train.data import ProbeData
from egosynth.train.diagnostics import (
    effective_rank,
    eta_values,
    linear_probe,
    next_frame_errors,
    wilson_interval,
)
from egosynth.train.model import TrainModel, frames_from_batch, shuffle_time


# --------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EgosynthError(f"--device = {name!r}: not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EgosynthError(f"--device = {name!r}: CUDA is not available on this machine")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the GPU supports it, else fp16 on CUDA; off on CPU by
    default (CPU autocast is rarely faster for these small convolutions)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# --------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        data: Iterable[Any],
        out: str | Path | None = None,
        probe: ProbeData | None = None,
    ) -> None:
        self.cfg, self.data, self.probe = cfg, data, probe
        self.out = Path(out) if out is not None else None
        self.device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = setup_distributed(self.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.model = TrainModel(cfg, distributed=self.dist.world > 1).to(self.device)
        self.net: nn.Module = self.model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.amp = amp_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp == torch.float16 and self.device.type == "cuda"
        )
        self.step = 0
        self.epoch = 0
        self.consumed = 0  # batches consumed in the current epoch
        self._loader_resumes = False
        self.history: list[dict[str, float]] = []
        self.writer = None

    # ------------------------------------------------------------------ schedule
    def _lr_factor(self, step: int) -> float:
        cfg = self.cfg
        if cfg.warmup and step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "constant":
            return 1.0
        span = max(cfg.steps - cfg.warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup, span) / span))

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        states: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
        }
        if hasattr(self.data, "state_dict"):
            states["data"] = self.data.state_dict()
        return states

    def meta(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "consumed": self.consumed,
            "config": self.cfg.to_json(),
            "model": self.cfg.model_json(),
        }

    def save(self) -> Path | None:
        if self.out is None or not self.dist.main:
            return None
        folder = self.out / "checkpoints"
        path = ckpt.save_checkpoint(folder / f"step_{self.step}.pt", self.state(), self.meta())
        olds = sorted(folder.glob("step_*.pt"), key=lambda f: int(f.stem.split("_")[1]))
        for old in olds[: -self.cfg.keep_checkpoints]:
            old.unlink()
        return path

    def load(self, path: str | Path) -> None:
        payload = ckpt.load_checkpoint(path, map_location=self.device)
        meta = payload["meta"]
        if meta.get("model") != self.cfg.model_json():
            raise EgosynthError(
                f"{path}: checkpoint was trained with model settings {meta.get('model')}, "
                f"not {self.cfg.model_json()}"
            )
        self.model.load_state_dict(payload["model"])
        self.opt.load_state_dict(payload["optimizer"])
        self.sched.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        ckpt.set_rng_state(payload["rng"])
        if "data" in payload and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(payload["data"])
            self._loader_resumes = True
        self.consumed = int(meta["consumed"])
        self.step, self.epoch = int(meta["step"]), int(meta["epoch"])

    # ------------------------------------------------------------------ data
    def _batches(self) -> Iterator[Any]:
        """Endless batches, epoch after epoch, resuming where the checkpoint left off."""
        by_loader, self._loader_resumes = self._loader_resumes, False
        n = len(self.data) if hasattr(self.data, "__len__") else None  # type: ignore[arg-type]
        if n and self.consumed >= n:  # the checkpoint closed an epoch: start the next one
            self.epoch, self.consumed = self.epoch + 1, 0
        # A resumable loader restarts mid-epoch itself; anything else replays and skips.
        skip = 0 if by_loader else self.consumed
        base = self.consumed if by_loader else 0
        while True:
            if hasattr(self.data, "set_epoch"):
                self.data.set_epoch(self.epoch)
            seen = 0
            for i, batch in enumerate(self.data):
                seen += 1
                if i < skip:
                    continue
                self.consumed = base + i + 1
                yield batch
            if seen == 0 and base == 0:
                raise EgosynthError("training data: the data iterable yielded no batches")
            skip = base = 0
            self.epoch += 1
            self.consumed = 0

    # ------------------------------------------------------------------ step
    def train_step(self, frames: Tensor) -> dict[str, float]:
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                            enabled=self.amp is not None):  # fmt: skip
            loss, parts = self.net(frames)
        if not torch.isfinite(loss):
            raise EgosynthError(
                f"step {self.step}: loss is {float(loss)}; lower --lr or enable --grad-clip"
            )
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}

    # ------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """eta, effective rank, next-frame error vs copy-last, linear probe, on held-out clips."""
        if self.probe is None:
            return {}
        self.model.eval()
        out: dict[str, float] = {}
        try:
            held = self._frames_chunks(self.probe.heldout_rgb)
            if self.model.encoder is not None:
                fused = torch.cat([self.model.embed(f)[1] for f in held]).float().cpu()
                eta = eta_values(fused)
                out["diag/eta_mean"] = float(eta.mean())
                out["diag/eta_min"] = float(eta.min())
                out["diag/effective_rank"] = effective_rank(fused.flatten(0, 1))
                out.update(self._probe(fused))
            if self.model.prednet is not None:
                errs = [self._pixel_errors(f) for f in held]
                # Chunks differ in size (the last one is short): weight by windows.
                sizes = [len(f) for f in held]
                mse_p = sum(e["mse_pred"] * n for e, n in zip(errs, sizes, strict=True))
                mse_c = sum(e["mse_copy"] * n for e, n in zip(errs, sizes, strict=True))
                mse_p, mse_c = mse_p / sum(sizes), mse_c / sum(sizes)
                out["diag/next_frame_mse"] = mse_p
                out["diag/copy_last_mse"] = mse_c
                out["diag/copy_over_pred"] = mse_c / max(mse_p, 1e-12)
        finally:
            self.model.train()
        return out

    def _frames_chunks(self, rgb: Tensor, chunk: int = 16) -> list[Tensor]:
        return [
            frames_from_batch(rgb[i : i + chunk], self.cfg.size, self.device)
            for i in range(0, len(rgb), chunk)
        ]

    def _pixel_errors(self, frames: Tensor) -> dict[str, float]:
        assert self.model.prednet is not None
        x = self.model.pixel_input(frames)
        pred, _ = self.model.prednet(x)
        return next_frame_errors(pred, x)

    def _embed_rgb(self, rgb: Tensor) -> Tensor:
        """uint8 windows (N, T, E, 3, H, W) or (N, T, E, H, W, 3) -> fused embeddings (N, T, D)
        on the CPU."""
        return torch.cat([self.model.embed(f)[1] for f in self._frames_chunks(rgb)]).float().cpu()

    def _probe(self, held_fused: Tensor) -> dict[str, float]:
        """Linear probe of object category, fitted on training clips, scored on held-out ones:
        on object crops when the probe data has them, else on whole frames."""
        p = self.probe
        assert p is not None
        if p.train_crops is not None and p.heldout_crops is not None:
            # A crop is a one-frame window: (M, E, h, w, 3) -> (M, 1, E, h, w, 3).
            tx = self._embed_rgb(p.train_crops.unsqueeze(1)).flatten(0, 1)
            hx = self._embed_rgb(p.heldout_crops.unsqueeze(1)).flatten(0, 1)
            ty, hy = p.train_crop_cat, p.heldout_crop_cat
        else:
            tx, ty = self._embed_rgb(p.train_rgb).flatten(0, 1), p.train_cat.flatten()
            hx, hy = held_fused.flatten(0, 1), p.heldout_cat.flatten()
        assert ty is not None and hy is not None
        tk, hk = ty >= 0, hy >= 0
        if tk.sum() < 2 or hk.sum() < 1 or len(torch.unique(ty[tk])) < 2:
            return {}
        res = linear_probe(tx[tk], ty[tk], hx[hk], hy[hk])
        n = int(hk.sum())
        low, high = wilson_interval(round(res["accuracy"] * n), n)
        return {
            "probe/accuracy": res["accuracy"],
            "probe/majority": res["majority"],
            "probe/n_heldout": float(n),
            "probe/n_train": float(tk.sum()),
            "probe/ci95_low": low,
            "probe/ci95_high": high,
        }

    # ------------------------------------------------------------------ logging
    def _log(self, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, self.step)

    def _open_writer(self) -> None:
        if self.out is not None and self.cfg.tensorboard and self.dist.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))

    # ------------------------------------------------------------------ fit
    def fit(
        self, resume: str | Path | None = None, until: int | None = None
    ) -> list[dict[str, float]]:
        """Train until cfg.steps; returns the per-step history (losses, timings, diagnostics).

        `resume`: a checkpoint file, or "latest" for the newest one under out/checkpoints.
        `until`: stop (with a checkpoint) after this step, as an interrupted run would; the
        schedule still spans cfg.steps.
        """
        if resume is not None:
            path = resume
            if str(resume) == "latest":
                path = ckpt.latest_checkpoint(self.out / "checkpoints") if self.out else None
            if path is not None:
                self.load(path)
        self._open_writer()
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc="train", unit="step",
            disable=not (cfg.progress and self.dist.main), dynamic_ncols=True,
        )  # fmt: skip
        if self.step == 0 and cfg.diag_every:
            diag = self.diagnostics()  # step 0: the randomly initialised encoder
            self._log(diag)
            if diag:
                self.history.append({"step": 0.0, **diag})
        batches = self._batches()
        wait = busy = 0.0
        stop = cfg.steps if until is None else min(until, cfg.steps)
        try:
            while self.step < stop:
                t0 = time.perf_counter()
                frames = frames_from_batch(
                    next(batches), cfg.size, self.device, cfg.fovea, cfg.augment
                )
                if cfg.shuffle_time:
                    frames = shuffle_time(frames, cfg.seed, self.step)
                t1 = time.perf_counter()
                rec = self.train_step(frames)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                t2 = time.perf_counter()
                self.step += 1
                wait, busy = wait + (t1 - t0), busy + (t2 - t1)
                rec["step"] = float(self.step)
                rec["time/data_fraction"] = (t1 - t0) / max(t2 - t0, 1e-9)
                rec["time/step_s"] = t2 - t0
                if cfg.diag_every and self.step % cfg.diag_every == 0:
                    rec.update(self.diagnostics())
                self.history.append(rec)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rec["lr"] = self.sched.get_last_lr()[0]
                    self._log({k: v for k, v in rec.items() if k != "step"})
                bar.set_postfix(loss=f"{rec['loss']:.4g}")
                bar.update(1)
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
            if not cfg.ckpt_every or self.step % cfg.ckpt_every:
                self.save()
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        self.timing = {"wait_s": wait, "busy_s": busy}
        return self.history


def summarise(trainer: Trainer) -> dict[str, Any]:
    """Last losses (mean of the last 10 steps), first and last diagnostics, speed."""
    steps = [h for h in trainer.history if "loss" in h]
    tail = steps[-10:]
    keys = sorted({k for h in tail for k in h if not k.startswith(("time/", "diag/", "probe/"))})
    out: dict[str, Any] = {
        "steps": trainer.step,
        "loss": {k: sum(h.get(k, 0.0) for h in tail) / max(len(tail), 1) for k in keys},
    }
    out["loss"].pop("step", None)
    out["loss"].pop("lr", None)
    diags = [h for h in trainer.history if any(k.startswith(("diag/", "probe/")) for k in h)]
    if diags:
        pick = lambda h: {k: v for k, v in h.items() if k.startswith(("diag/", "probe/"))}  # noqa: E731
        out["diagnostics_first"] = {"step": diags[0]["step"], **pick(diags[0])}
        out["diagnostics_last"] = {"step": diags[-1]["step"], **pick(diags[-1])}
    t = getattr(trainer, "timing", None)
    if t and t["wait_s"] + t["busy_s"] > 0:
        total = t["wait_s"] + t["busy_s"]
        out["steps_per_s"] = len(steps) / total if steps else 0.0
        out["data_wait_fraction"] = t["wait_s"] / total
    if trainer.out is not None:
        out["out"] = str(trainer.out)
    return out
