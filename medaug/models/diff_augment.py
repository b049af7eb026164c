"""Differentiable augmentation for GAN training on a few hundred images (DiffAugment).

Zhao, Liu, Lin, Zhu, Han: "Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS
2020. The same random brightness / contrast / translation / cutout is applied to real and generated
images before the discriminator sees them, so the discriminator cannot memorise the few real
images, while gradients still flow to the generator through the (differentiable) operations.
MONAI's random transforms are not differentiable batch operations on the autograd graph, hence
this small hand-written version of the paper's policy ``color,translation,cutout``.
Inputs are ``(N, C, H, W)`` in the GAN's range ``[-1, 1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _brightness(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, generator=g, device=x.device) - 0.5)


def _contrast(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, generator=g, device=x.device) + 0.5) + mean


def _translation(x: torch.Tensor, g: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(-sw, sw + 1, (n,), generator=g, device=x.device)
    # Shift by gathering from a zero-padded copy: differentiable w.r.t. the pixels.
    padded = F.pad(x, (sw, sw, sh, sh))
    rows = (torch.arange(h, device=x.device)[None, :] + sh - dy[:, None]).clamp(0, h + 2 * sh - 1)
    cols = (torch.arange(w, device=x.device)[None, :] + sw - dx[:, None]).clamp(0, w + 2 * sw - 1)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, g: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n,), generator=g, device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n,), generator=g, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    inside_y = (ys >= (cy[:, None] - ch // 2)) & (ys < (cy[:, None] - ch // 2 + ch))
    inside_x = (xs >= (cx[:, None] - cw // 2)) & (xs < (cx[:, None] - cw // 2 + cw))
    mask = ~(inside_y[:, :, None] & inside_x[:, None, :])
    return x * mask[:, None].to(x.dtype)


POLICY = {"color": (_brightness, _contrast), "translation": (_translation,), "cutout": (_cutout,)}


def diff_augment(x: torch.Tensor, generator: torch.Generator, policy: str = "color,translation,cutout") -> torch.Tensor:
    """Apply the DiffAugment ``policy`` (comma-separated names of :data:`POLICY`) to a batch."""
    for name in filter(None, (p.strip() for p in policy.split(","))):
        if name not in POLICY:
            raise ValueError(f"unknown DiffAugment policy {name!r}; choose from {sorted(POLICY)}")
        for op in POLICY[name]:
            x = op(x, generator)
    return x.contiguous()
