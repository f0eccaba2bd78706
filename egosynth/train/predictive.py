"""Predictive coding of the future: a latent predictor (CPC-style) and PredNet (pixels).

LatentPredictor: a context network (GRU, or a causal temporal convolution) reads the fused
embeddings z_1..z_t of a window; one linear head per horizon k predicts z_{t+k}; InfoNCE
(`losses.InfoNCE`) scores each prediction against the true future embedding, with every other
(clip, time) of the batch as a negative (van den Oord et al. 2018).

PredNet (Lotter, Kreiman & Cox 2017): a stack of layers, each with representation units R_l
(a convolutional LSTM), a prediction Ahat_l, targets A_l and error units
E_l = [relu(A_l - Ahat_l), relu(Ahat_l - A_l)]. Errors go up (A_{l+1} = pool(conv(E_l))),
representations come down (R_l gets upsampled R_{l+1}). Ahat_0 is the predicted next frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egosynth.errors import EgosynthError
from egosynth.train.losses import InfoNCE, error_units

CONTEXTS = ("gru", "tcn")


class CausalTemporalConv(nn.Module):
    """Stack of dilated 1-D convolutions over time that never look at the future."""

    def __init__(self, dim: int, hidden: int, levels: int = 3, kernel: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.pads = []
        for i in range(levels):
            dilation = 2**i
            self.pads.append((kernel - 1) * dilation)
            self.convs.append(
                nn.Conv1d(dim if i == 0 else hidden, hidden, kernel, dilation=dilation)
            )

    def forward(self, z: Tensor) -> Tensor:  # (B, T, D) -> (B, T, hidden)
        h = z.transpose(1, 2)
        for pad, conv in zip(self.pads, self.convs, strict=True):
            h = F.relu(conv(F.pad(h, (pad, 0))))  # left padding only: causal
        return h.transpose(1, 2)


class LatentPredictor(nn.Module):
    """Context over past embeddings -> predicted embeddings k frames ahead, InfoNCE-scored."""

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        context: str = "gru",
        horizons: tuple[int, ...] = (1, 3),
        temperature: float = 0.1,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if context not in CONTEXTS:
            raise EgosynthError(f"predictive: context = {context!r}: expected one of {CONTEXTS}")
        if not horizons or min(horizons) < 1:
            raise EgosynthError(f"predictive: horizons = {horizons}: need k >= 1")
        self.horizons = tuple(int(k) for k in horizons)
        self.context_kind = context
        if context == "gru":
            self.context = nn.GRU(dim, hidden, batch_first=True)
        else:
            self.context = CausalTemporalConv(dim, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, dim) for _ in self.horizons)
        self.nce = InfoNCE(temperature, gather_distributed)

    def contexts(self, z: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, hidden); c_t depends on z_1..z_t only."""
        if self.context_kind == "gru":
            return self.context(z)[0]
        return self.context(z)

    def forward(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        t = z.shape[1]
        if t <= max(self.horizons):
            raise EgosynthError(
                f"predictive: windows of {t} frames are too short for horizon "
                f"{max(self.horizons)}; use longer windows or smaller --horizons"
            )
        c = self.contexts(z)
        parts = {}
        for k, head in zip(self.horizons, self.heads, strict=True):
            pred = head(c[:, : t - k]).flatten(0, 1)
            parts[f"nce_k{k}"] = self.nce(pred, z[:, k:].flatten(0, 1))
        total = torch.stack(list(parts.values())).mean()
        return total, parts


class ConvLSTMCell(nn.Module):
    def __init__(self, in_ch: int, hidden: int, kernel: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_ch + hidden, 4 * hidden, kernel, padding=kernel // 2)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class PredNet(nn.Module):
    """PredNet over (B, T, 3, H, W) frames in [0, 1]; H and W divisible by 2**(layers-1).

    forward returns (predictions (B, T, 3, H, W), errors [per layer (B, T, 2C_l, H_l, W_l)]):
    predictions[:, t] is the prediction of frame t made from frames < t (t = 0: from nothing).
    """

    def __init__(
        self, channels: tuple[int, ...] = (3, 24, 48), r_channels: tuple[int, ...] | None = None
    ):
        super().__init__()
        if len(channels) < 1 or channels[0] != 3:
            raise EgosynthError(f"pixel: channels = {channels}: first layer must be 3 (rgb)")
        self.a_ch = tuple(channels)
        self.r_ch = tuple(r_channels or channels)
        n = len(self.a_ch)
        self.cells = nn.ModuleList()
        for i in range(n):
            top_down = self.r_ch[i + 1] if i + 1 < n else 0
            self.cells.append(ConvLSTMCell(2 * self.a_ch[i] + top_down, self.r_ch[i]))
        self.ahat = nn.ModuleList(
            nn.Conv2d(self.r_ch[i], self.a_ch[i], 3, padding=1) for i in range(n)
        )
        self.up_a = nn.ModuleList(
            nn.Conv2d(2 * self.a_ch[i], self.a_ch[i + 1], 3, padding=1) for i in range(n - 1)
        )

    @property
    def n_layers(self) -> int:
        return len(self.a_ch)

    def _init_state(self, b: int, h: int, w: int, ref: Tensor):
        r, c, e = [], [], []
        for i in range(self.n_layers):
            hh, ww = h >> i, w >> i
            r.append(ref.new_zeros(b, self.r_ch[i], hh, ww))
            c.append(ref.new_zeros(b, self.r_ch[i], hh, ww))
            e.append(ref.new_zeros(b, 2 * self.a_ch[i], hh, ww))
        return r, c, e

    def forward(self, frames: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, t, _, h, w = frames.shape
        div = 2 ** (self.n_layers - 1)
        if h % div or w % div:
            raise EgosynthError(
                f"pixel: frame size {w}x{h} must be divisible by {div} for {self.n_layers} layers"
            )
        r, c, e = self._init_state(b, h, w, frames)
        preds, errs = [], [[] for _ in range(self.n_layers)]
        for step in range(t):
            # Top-down: update representations from last errors and the layer above.
            for i in reversed(range(self.n_layers)):
                inp = [e[i]]
                if i + 1 < self.n_layers:
                    inp.append(F.interpolate(r[i + 1], scale_factor=2.0, mode="nearest"))
                r[i], c[i] = self.cells[i](torch.cat(inp, 1), (r[i], c[i]))
            # Bottom-up: predictions, errors, next layer's targets.
            a = frames[:, step]
            for i in range(self.n_layers):
                ahat = F.relu(self.ahat[i](r[i]))
                if i == 0:
                    ahat = torch.clamp(ahat, max=1.0)  # PredNet's SatLU: pixels live in [0, 1]
                    preds.append(ahat)
                e[i] = error_units(a, ahat)
                errs[i].append(e[i])
                if i + 1 < self.n_layers:
                    a = F.max_pool2d(F.relu(self.up_a[i](e[i])), 2)
        return torch.stack(preds, 1), [torch.stack(x, 1) for x in errs]
