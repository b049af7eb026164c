"""Class-specific VAEs whose latent codes of same-class images are interpolated.

One MONAI ``VarAutoEncoder`` per class is fitted on that class's train images (reconstruction
binary cross-entropy + ``beta`` x KL divergence, Kingma & Welling 2014). A synthetic image is the
decoding of ``(1 - a) * mu_i + a * mu_j`` for two distinct real images ``i, j`` of the class
(posterior means), ``a ~ U[alpha_min, alpha_max]``: the latent-interpolation oversampling reported
to raise minority-class accuracy on a small endoscopy set. Both parents are recorded.
:meth:`ClassVAEInterpolation.sample_prior` decodes draws from the prior N(0, I) instead: the plain
"VAE" generator of generator comparisons, with no real parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import VarAutoEncoder
from tqdm.auto import tqdm

from medaug.models.generator_base import ImageGenerator, SampleBatch, batches, seeded


class ClassVAEInterpolation(ImageGenerator):
    """One VAE per class; samples by interpolating the latent means of same-class pairs.

    Args:
        in_channels, num_classes, image_size: the data (image_size divisible by 4).
        latent_size: length of the latent code.
        channels: encoder feature channels of the two stride-2 stages, e.g. ``(32, 64)``.
        iterations: optimiser steps per class.
        batch_size: images per step.
        lr: Adam learning rate.
        beta: weight of the KL term.
        alpha_range: ``(min, max)`` of the interpolation weight ``a``.
    """

    name = "vae_interp"
    sampling_only = frozenset({"alpha_range"})

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int],
        *,
        latent_size: int = 32,
        channels: Sequence[int] = (32, 64),
        iterations: int = 500,
        batch_size: int = 32,
        lr: float = 1e-3,
        beta: float = 1.0,
        alpha_range: Sequence[float] = (0.2, 0.8),
        **common: Any,
    ) -> None:
        # common: seed, device, progress, as ImageGenerator takes them
        super().__init__(in_channels, num_classes, image_size, **common)
        low, high = (float(a) for a in alpha_range)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"vae_interp: alpha_range must satisfy 0 <= min <= max <= 1, got {alpha_range}")
        self.alpha_range = (low, high)
        self.latent_size, self.iterations, self.batch_size = int(latent_size), int(iterations), int(batch_size)
        self.lr, self.beta = float(lr), float(beta)
        with seeded(self.seed):
            self.vaes = torch.nn.ModuleList(
                [
                    VarAutoEncoder(
                        spatial_dims=2,
                        in_shape=(in_channels, *self.image_size),
                        out_channels=in_channels,
                        latent_size=self.latent_size,
                        channels=tuple(int(c) for c in channels),
                        strides=(2,) * len(channels),
                        num_res_units=1,
                        use_mean_at_inference=True,
                    )
                    for _ in range(num_classes)
                ]
            ).to(self.device)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vaes": self.vaes}

    def fit(self, images: torch.Tensor, labels: torch.Tensor) -> ClassVAEInterpolation:
        self.check_fit_inputs(images, labels)
        images, labels = images.to(self.device).float(), labels.to(self.device).long()
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        self.history = {}
        steps = self.iterations * self.num_classes
        bar = tqdm(total=steps, desc="fit vae_interp", disable=not self.progress, leave=False)
        for label, vae in enumerate(self.vaes):
            own = images[labels == label]
            losses = self.history.setdefault(f"loss_class{label}", [])
            if len(own) == 0:  # a class absent from train: nothing to learn, nothing will be sampled
                bar.update(self.iterations)
                continue
            opt = torch.optim.Adam(vae.parameters(), lr=self.lr)
            vae.train()
            for _ in range(self.iterations):
                x = own[torch.randint(0, len(own), (min(self.batch_size, len(own)),), generator=g, device=self.device)]
                mu, logvar = vae.encode_forward(x)
                z = mu + torch.randn(mu.shape, generator=g, device=self.device) * torch.exp(0.5 * logvar)
                recon = vae.decode_forward(z)
                rec = F.binary_cross_entropy(recon, x, reduction="sum") / len(x)
                kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
                loss = rec + self.beta * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.update(1)
        bar.close()
        return self

    @torch.no_grad()
    def sample(self, label: int, n: int, real_images: torch.Tensor, real_ids: Sequence[str], seed: int) -> SampleBatch:
        """Decode interpolations between the latent means of random distinct pairs of ``real_images``
        (the train images of class ``label``)."""
        if n and len(real_images) < 2:
            raise ValueError(
                f"vae_interp: class {label} needs at least 2 train images to interpolate, has {len(real_images)}"
            )
        vae = self.vaes[int(label)].eval()
        g = torch.Generator().manual_seed(int(seed))
        mu = (
            torch.cat(
                [
                    vae.encode_forward(real_images[a:b].to(self.device).float())[0]
                    for a, b in batches(len(real_images), 256)
                ]
            )
            if n
            else None
        )
        i = torch.randint(0, len(real_images), (n,), generator=g)
        j = (i + torch.randint(1, max(len(real_images), 2), (n,), generator=g)) % max(len(real_images), 1)  # j != i
        low, high = self.alpha_range
        a = (low + (high - low) * torch.rand(n, 1, generator=g)).to(self.device)
        out = []
        for start, stop in batches(n, 256):
            z = (1 - a[start:stop]) * mu[i[start:stop]] + a[start:stop] * mu[j[start:stop]]
            out.append(vae.decode_forward(z))
        images = torch.cat(out).clamp(0, 1).cpu() if out else torch.empty(0, self.in_channels, *self.image_size)
        parents = [[str(real_ids[int(p)]), str(real_ids[int(q)])] for p, q in zip(i, j)]
        return SampleBatch(images, parents)

    @torch.no_grad()
    def sample_prior(
        self, label: int, n: int, real_images: torch.Tensor, real_ids: Sequence[str], seed: int
    ) -> SampleBatch:
        """Decode ``z ~ N(0, I)`` with the class's VAE (what a VAE generates when not steered by real
        images: blurrier and more varied than interpolations). No real parent."""
        vae = self.vaes[int(label)].eval()
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, vae.latent_size, generator=g).to(self.device)
        out = [vae.decode_forward(z[a:b]) for a, b in batches(n, 256)]
        images = torch.cat(out).clamp(0, 1).cpu() if out else torch.empty(0, self.in_channels, *self.image_size)
        return SampleBatch(images, [[] for _ in range(n)])
