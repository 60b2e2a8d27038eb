"""The building blocks of Vision Mamba: RMSNorm, DropPath, PatchEmbed, the bidirectional Mamba
mixer ("bimamba v2") and the add -> norm -> mixer Block. The math is vim.md's, line by line.

Parameter and module names are the official state_dict names (``in_proj``, ``conv1d``,
``x_proj``, ``dt_proj``, ``A_log``, ``D``, the ``_b`` copies, ``out_proj``, ``norm``), so an
official checkpoint loads without renaming.

Two implementations of the mixer share these parameters (``scan_impl``):

- ``"fast"``: token-major all the way (``(B, L, E)``, as the linears produce it; the scan
  reads ``(B, E, L)`` views of it in place), the backward direction as an anti-causal conv
  plus a reverse scan: no flip or transpose copies of activations. In CPU inference
  everything between in_proj and out_proj is one ``mixer_core`` call (``scan_form="core"``);
  elsewhere both directions, their shared gate and their average are one
  ``selective_scan_bidirectional`` call.
- ``"reference"``: vim.md's formulation as written (flip, causal conv, the python-loop reference
  scan, flip back). Slow; for debugging and as the oracle of the fast path.

The fast mixer's ``scan_form`` and ``conv_form`` pick among equal computations the one whose
graph suits where it runs (``SCAN_FORMS``, ``CONV_FORMS``). The defaults suit eager and
``torch.compile``; export routes set others for the duration of an export
(``vimc.export.program.model_forms``).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from vimc.ops import (
    anticausal_conv1d,
    causal_conv1d,
    conv1d_channel_major,
    conv1d_silu_pair,
    mixer_core_available,
    selective_scan,
    selective_scan_bidirectional,
    selective_scan_bidirectional_token_major,
    selective_scan_reference,
)

SCAN_IMPLS = ("fast", "reference")
# how the fast mixer calls the scan: "core", with the "fused" conv form one mixer_core call
# from in_proj's output to out_proj's input (conv, x_proj, dt_proj, both scans and the gate)
# wherever its fused C kernel runs (CPU, float32, grad mode off: compiled Vim-Ti 0.94-0.97x of
# "bidirectional" on an AVX2-only Zen 4, README), else "bidirectional"; "bidirectional", one
# selective_scan_bidirectional call for both directions (one fused kernel call on CPU);
# "per_direction", two selective_scan calls and their mean; "token_major", one
# selective_scan_bidirectional_token_major call on the (B, L, .) activations (no transposes
# around it). The same numbers each way.
SCAN_FORMS = ("core", "bidirectional", "per_direction", "token_major")
# how it runs each direction's depthwise conv and silu (vimc.ops' conv functions): "fused", with
# grad mode off both directions in one conv1d_silu_pair call (the fused C kernel on CPU in
# float32: 0.86-0.89x the eager forward at batch 1, 0.87-0.88x at batch 8; compiled, where the
# op stands in the graph for Inductor's fused loop, 0.92-0.97x at batch 8 and 0.96-0.99x at
# batch 1 per round on an AVX2-only Zen 4, README), else the shifted form; "shifted", K shifted
# multiply-adds on token-major activations (pointwise ops a compiler fuses into one loop);
# "channel_major", one F.conv1d per direction on (B, E, L) views (one Conv node for graphs
# translated node by node).
CONV_FORMS = ("fused", "shifted", "channel_major")


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight``, computed in float32, weight only (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(out_dtype or x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's DropPath): identity at inference or with rate 0."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class PatchEmbed(nn.Module):
    """Conv2d(k=patch, stride=stride), flattened to tokens: (B, C, H, W) -> (B, M, D)."""

    def __init__(
        self,
        img_size: tuple[int, int],
        patch_size: int,
        stride: int,
        in_chans: int,
        embed_dim: int,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = patch_size
        self.stride = stride
        self.grid_size = self.grid_for(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=patch_size, stride=stride, device=device, dtype=dtype
        )

    def grid_for(self, hw) -> tuple[int, int]:
        return tuple((s - self.patch_size) // self.stride + 1 for s in hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The conv as patches @ weight^T: the same numbers as ``self.proj(x)`` flattened, with
        no conv backend choice (whose fake kernel mispredicts strides for an unbacked batch)."""
        B, C, H, W = x.shape
        p, s = self.patch_size, self.stride
        gh, gw = (H - p) // s + 1, (W - p) // s + 1
        if p == s:  # non-overlapping: a reshape, no im2col
            cols = x[:, :, : gh * p, : gw * p].reshape(B, C, gh, p, gw, p)
            cols = cols.permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * p * p)
        else:
            cols = F.unfold(x, p, stride=s).transpose(1, 2)  # (B, M, C*p*p)
        return F.linear(cols, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


# ---------------------------------------------------------------------------------------------
# the mixer
# ---------------------------------------------------------------------------------------------


def _channel_major(args: list) -> list:
    """(B, E, L) / (B, N, L) views of a mixer's token-major (B, L, .) scan arguments."""
    return [a.mT if a.dim() == 3 else a for a in args]


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba ("v2"): shared in_proj/out_proj, one conv/x_proj/dt_proj/A/D per
    direction, ``out_proj((y_f + y_b) / 2)``. (B, L, D) -> (B, L, D)."""

    # The fast forward multiplies by x_proj's weight with zero rows appended up to a multiple
    # of this many outputs and slices them off: the same numbers (each output column is its own
    # dot product), but MKL runs Vim-Ti's 44 columns (dt_rank 12 + 2 x 16) slower than 48:
    # 0.85x the time per call at 48, batch 8 (benchmarks/linears.py). 1: no padding, which the
    # export routes that translate graphs node by node set (export/program.py).
    x_proj_align = 16

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        scan_impl: str = "fast",
        scan_form: str = "core",
        conv_form: str = "fused",
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.d_state = d_model, d_state
        self.d_inner = E = expand * d_model
        self.dt_rank = R = dt_rank or math.ceil(d_model / 16)
        self.scan_impl = scan_impl
        self.scan_form = scan_form
        self.conv_form = conv_form
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False, **kw)
        for sfx in ("", "_b"):
            # padding=d_conv-1 only mirrors the official module; forward pads explicitly
            self.add_module(
                "conv1d" + sfx,
                nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=True, **kw),
            )
            self.add_module("x_proj" + sfx, nn.Linear(E, R + 2 * d_state, bias=False, **kw))
            self.add_module("dt_proj" + sfx, nn.Linear(R, E, bias=True, **kw))
        A_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32, device=device))
        self.A_log = nn.Parameter(A_log.repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E, device=device))
        self.A_b_log = nn.Parameter(A_log.repeat(E, 1))
        self.D_b = nn.Parameter(torch.ones(E, device=device))
        self.out_proj = nn.Linear(E, d_model, bias=False, **kw)

    @property
    def scan_impl(self) -> str:
        return self._scan_impl

    @scan_impl.setter
    def scan_impl(self, value: str) -> None:
        if value not in SCAN_IMPLS:
            raise ValueError(f"scan_impl must be one of {SCAN_IMPLS}, got {value!r}")
        self._scan_impl = value

    @property
    def scan_form(self) -> str:
        return self._scan_form

    @scan_form.setter
    def scan_form(self, value: str) -> None:
        if value not in SCAN_FORMS:
            raise ValueError(f"scan_form must be one of {SCAN_FORMS}, got {value!r}")
        self._scan_form = value

    @property
    def conv_form(self) -> str:
        return self._conv_form

    @conv_form.setter
    def conv_form(self, value: str) -> None:
        if value not in CONV_FORMS:
            raise ValueError(f"conv_form must be one of {CONV_FORMS}, got {value!r}")
        self._conv_form = value

    def _direction(self, sfx: str):
        return (
            getattr(self, "conv1d" + sfx),
            getattr(self, "x_proj" + sfx),
            getattr(self, "dt_proj" + sfx),
            getattr(self, "A_b_log" if sfx else "A_log"),
            getattr(self, "D" + sfx),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self._scan_impl == "reference":
            return self._forward_reference(h)
        # token-major (B, L, .) throughout, as the linears produce it; the scan reads the
        # (B, E, L) views (.mT) in place, so neither eager nor Inductor copies a transpose
        E, R, N = self.d_inner, self.dt_rank, self.d_state
        xz = F.linear(h, self.in_proj.weight)  # (B, L, 2E)
        if self._scan_form == "core" and self._conv_form == "fused" and self.core_runs(xz):
            # the op itself: mixer_core() would ask mixer_core_available again
            return F.linear(self._core(xz), self.out_proj.weight)
        x, z = xz[..., :E], xz[..., E:]
        us = self._convolutions(x)  # (B, L, E) each
        args, dt_weights = [], []
        for sfx, u in zip(("", "_b"), us):
            conv, xp, dtp, A_log, Dskip = self._direction(sfx)
            x_dbl = F.linear(u, self._x_proj_weight(xp.weight))  # (B, L, >= R + 2N)
            args += [
                u,
                x_dbl[..., :R],  # dt_proj's input: _scan applies dt_proj (its bias is the scan's)
                -torch.exp(A_log.float()),
                x_dbl[..., R : R + N],
                x_dbl[..., R + N : R + 2 * N],
                Dskip.float(),
                dtp.bias.float(),
            ]
            dt_weights.append(dtp.weight)
        return F.linear(self._scan(args, dt_weights, z), self.out_proj.weight)

    def core_runs(self, xz: torch.Tensor) -> bool:
        """Whether mixer_core runs its fused kernel on xz and these parameters (elsewhere the
        "bidirectional" path, x_proj's padding and the fused conv form included)."""
        c, cb, dtp, dtp_b = self.conv1d, self.conv1d_b, self.dt_proj, self.dt_proj_b
        return mixer_core_available(
            xz, (c.weight, c.bias, cb.weight, cb.bias, self.x_proj.weight, self.x_proj_b.weight,
                 dtp.weight, dtp.bias, dtp_b.weight, dtp_b.bias, self.A_log, self.A_b_log,
                 self.D, self.D_b),
        )  # fmt: skip

    def _core(self, xz: torch.Tensor) -> torch.Tensor:
        """The out_proj input from in_proj's output xz (B, L, 2E), one mixer_core call (every
        parameter float32 already: core_runs asked)."""
        c, cb, xp, xpb = self.conv1d, self.conv1d_b, self.x_proj, self.x_proj_b
        return torch.ops.vimc.mixer_core_fwd(
            xz, c.weight, c.bias, cb.weight, cb.bias, xp.weight, xpb.weight,
            self.dt_proj.weight, self.dt_proj.bias, self.dt_proj_b.weight, self.dt_proj_b.bias,
            -torch.exp(self.A_log), -torch.exp(self.A_b_log), self.D, self.D_b,
        )  # fmt: skip

    def _convolutions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each direction's conv and silu of token-major x (B, L, E), in the mixer's conv form."""
        c, cb = self.conv1d, self.conv1d_b
        if self._conv_form == "fused":
            return conv1d_silu_pair(x, c.weight, c.bias, cb.weight, cb.bias)
        if self._conv_form == "channel_major":
            xc = x.mT  # shared by both
            return tuple(
                conv1d_channel_major(xc, m.weight, m.bias, causal, silu=True).mT
                for m, causal in ((c, True), (cb, False))
            )
        return causal_conv1d(x, c.weight, c.bias, silu=True), anticausal_conv1d(
            x, cb.weight, cb.bias, silu=True
        )

    @property
    def x_proj_width(self) -> int:
        """How many outputs the fast forward's x_proj computes: R + 2N, padded up to a multiple
        of ``x_proj_align``."""
        return -(-(self.dt_rank + 2 * self.d_state) // self.x_proj_align) * self.x_proj_align

    def _x_proj_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """x_proj's (R + 2N, E) weight with zero rows up to ``x_proj_width``."""
        pad = self.x_proj_width - weight.shape[0]
        return F.pad(weight, (0, 0, 0, pad)) if pad else weight

    def _scan(self, args: list, dt_weights: list, z: torch.Tensor) -> torch.Tensor:
        """(y_f + y_b) / 2, each gated by silu(z), from token-major args (u, dt_proj's input, A,
        B, C, D, delta_bias per direction) and each direction's dt_proj weight -> (B, L, E), in
        the mixer's scan form."""
        if self._scan_form in ("core", "bidirectional"):  # core: with another conv form
            # dt_proj goes to the scan, whose CPU inference kernel applies it per step; the
            # channel-major scans read (B, E, L) / (B, N, L) views of the token-major tensors
            y = selective_scan_bidirectional(
                *_channel_major(args), z=z.mT, delta_softplus=True, delta_proj=dt_weights[0],
                delta_proj_b=dt_weights[1],
            )  # fmt: skip
            return y.mT
        for i, w in zip((1, 8), dt_weights):
            args[i] = F.linear(args[i], w)  # delta (B, L, E)
        if self._scan_form == "token_major":
            return selective_scan_bidirectional_token_major(*args, z=z, delta_softplus=True)
        f, b = _channel_major(args[:7]), _channel_major(args[7:])
        y_f = selective_scan(*f[:5], D=f[5], z=z.mT, delta_bias=f[6], delta_softplus=True)
        y_b = selective_scan(
            *b[:5], D=b[5], z=z.mT, delta_bias=b[6], delta_softplus=True, reverse=True
        )
        return ((y_f + y_b) / 2).mT  # (B, L, E) view

    def _forward_reference(self, h: torch.Tensor) -> torch.Tensor:
        """vim.md as written: flip, causal conv with padding 3 cut to L, reference scan."""
        E, R, N = self.d_inner, self.dt_rank, self.d_state
        L = h.shape[1]
        xz = F.linear(h, self.in_proj.weight).transpose(1, 2)  # (B, 2E, L)
        x, z = xz[:, :E], xz[:, E:]

        def branch(x, z, sfx):
            conv, xp, dtp, A_log, Dskip = self._direction(sfx)
            u = F.silu(conv(x)[..., :L])
            x_dbl = F.linear(u.transpose(1, 2), xp.weight)  # (B, L, R+2N)
            delta = dtp.weight @ x_dbl[..., :R].transpose(1, 2)
            Bm = x_dbl[..., R : R + N].transpose(1, 2)
            Cm = x_dbl[..., R + N :].transpose(1, 2)
            return selective_scan_reference(
                u,
                delta,
                -torch.exp(A_log.float()),
                Bm,
                Cm,
                D=Dskip.float(),
                z=z,
                delta_bias=dtp.bias.float(),
                delta_softplus=True,
            )

        y_f = branch(x, z, "")
        y_b = branch(x.flip(-1), z.flip(-1), "_b").flip(-1)
        return F.linear(((y_f + y_b) / 2).transpose(1, 2), self.out_proj.weight)


@contextlib.contextmanager
def mixer_forms(model: nn.Module, **forms):
    """Within this block, every BiMambaMixer of ``model`` has the given attributes (any of
    ``scan_form``, ``conv_form``, ``x_proj_align``); each mixer's own values come back
    afterwards, also on error. Callers that share a model across threads hold their own lock
    (an export does: vimc.export.program.model_forms)."""
    unknown = sorted(set(forms) - {"scan_form", "conv_form", "x_proj_align"})
    if unknown:
        raise TypeError(f"mixer_forms: no such mixer form {unknown}")
    mixers = [m for m in model.modules() if isinstance(m, BiMambaMixer)]
    # a class-level default (x_proj_align) set on an instance is deleted again afterwards, so a
    # later change of the class default still reaches the mixer
    saved = [(m, {a: (getattr(m, a), a in vars(m) or _is_property(m, a)) for a in forms})
             for m in mixers]  # fmt: skip
    try:
        for m in mixers:
            for attr, value in forms.items():
                setattr(m, attr, value)
        yield model
    finally:
        for m, old in saved:
            for attr, (value, own) in old.items():
                if own:
                    setattr(m, attr, value)
                else:
                    delattr(m, attr)


def _is_property(obj, attr: str) -> bool:
    return isinstance(getattr(type(obj), attr, None), property)


class Block(nn.Module):
    """add -> RMSNorm -> mixer, returning (hidden, residual); the residual stream is float32."""

    def __init__(
        self,
        dim: int,
        mixer: BiMambaMixer,
        drop_path: float = 0.0,
        eps: float = 1e-5,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(dim, eps=eps, device=device, dtype=dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None):
        if residual is None:
            residual = hidden.float()
        else:
            residual = residual + self.drop_path(hidden).float()
        hidden = self.mixer(self.norm(residual, out_dtype=hidden.dtype))
        return hidden, residual
