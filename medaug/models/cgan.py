"""Class-conditional GAN for a few hundred training images.

Networks are MONAI's ``Generator`` (latent vector -> transposed convolutions) and ``Discriminator``;
the class enters the generator as a one-hot vector appended to the latent code and the discriminator
as one-hot planes appended to the image channels (Mirza & Osindero 2014). What makes it train on
small medical datasets:

- **spectral normalisation** of every discriminator layer (Miyato et al. 2018) bounds its Lipschitz
  constant;
- **DiffAugment** (Zhao et al. 2020, :mod:`medaug.models.diff_augment`) on real and fake images
  before the discriminator;
- **R1 penalty** ``gamma / 2 * E ||grad_x D(x)||^2`` on real images (Mescheder et al. 2018);
- an **EMA generator** (exponential moving average of the weights, Karras et al. 2018), which is
  the one sampled.

The loss is the non-saturating logistic loss. The loop is written here rather than with MONAI's
``GanTrainer`` because that engine calls the generator with the latent only and the discriminator
with the image only, leaving no place for the class condition, the R1 gradient or the EMA update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import Discriminator, Generator
from torch.nn.utils.parametrizations import spectral_norm
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from medaug.models.diff_augment import diff_augment
from medaug.models.generator_base import ImageGenerator, SampleBatch, batches, seeded


def _spectral_normalise(module: torch.nn.Module) -> torch.nn.Module:
    for name, child in module.named_children():
        if isinstance(child, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            setattr(module, name, spectral_norm(child))
        else:
            _spectral_normalise(child)
    return module


class ConditionalGAN(ImageGenerator):
    """Conditional GAN with spectral norm, DiffAugment, R1 and an EMA generator.

    Args:
        in_channels, num_classes, image_size: the data (image_size must be divisible by 4).
        latent_size: length of the noise vector.
        channels: feature channels of the two up/down-sampling stages, e.g. ``(64, 32)``.
        iterations: discriminator + generator updates.
        batch_size: images per update.
        lr: Adam learning rate of both networks (betas 0, 0.99 as in StyleGAN2).
        r1_gamma: weight of the R1 penalty.
        ema_decay: EMA decay of the sampled generator.
        diffaugment: DiffAugment policy ("" disables it).
    """

    name = "gan"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int],
        *,
        latent_size: int = 64,
        channels: Sequence[int] = (64, 32),
        iterations: int = 1000,
        batch_size: int = 32,
        lr: float = 2e-4,
        r1_gamma: float = 1.0,
        ema_decay: float = 0.99,
        diffaugment: str = "color,translation,cutout",
        **common: Any,
    ) -> None:
        # common: seed, device, progress, as ImageGenerator takes them
        super().__init__(in_channels, num_classes, image_size, **common)
        if any(s % 4 for s in self.image_size):
            raise ValueError(f"gan: image_size must be divisible by 4, got {self.image_size}")
        self.latent_size, self.iterations, self.batch_size = int(latent_size), int(iterations), int(batch_size)
        self.lr, self.r1_gamma, self.ema_decay, self.diffaugment = (
            float(lr),
            float(r1_gamma),
            float(ema_decay),
            diffaugment,
        )
        c1, c2 = (int(c) for c in channels)
        h, w = self.image_size
        with seeded(self.seed):
            self.generator = Generator(
                latent_shape=(self.latent_size + num_classes,),
                start_shape=(c1, h // 4, w // 4),
                channels=(c1, c2, in_channels),
                strides=(2, 2, 1),
                num_res_units=0,
                act=("leakyrelu", {"negative_slope": 0.2}),
                norm="batch",
            ).to(self.device)
            self.discriminator = _spectral_normalise(
                Discriminator(
                    in_shape=(in_channels + num_classes, h, w),
                    channels=(c2, c1),
                    strides=(2, 2),
                    num_res_units=0,
                    act=("leakyrelu", {"negative_slope": 0.2}),
                    norm=None,
                    dropout=None,
                    last_act=None,
                )
            ).to(self.device)
        self.ema = AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay), use_buffers=True)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator, "ema": self.ema}

    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, self.num_classes).float()

    def _generate(self, net: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.tanh(net(torch.cat([z, self._one_hot(labels)], dim=1)))

    def _discriminate(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        planes = self._one_hot(labels)[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.discriminator(torch.cat([x, planes], dim=1)).view(-1)

    def fit(self, images: torch.Tensor, labels: torch.Tensor) -> ConditionalGAN:
        self.check_fit_inputs(images, labels)
        real_all = (images.to(self.device) * 2 - 1).float()  # the GAN works in [-1, 1] (tanh output)
        labels = labels.to(self.device).long()
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=(0.0, 0.99))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(0.0, 0.99))
        self.history = {"d_loss": [], "g_loss": [], "r1": []}
        self.generator.train()
        self.discriminator.train()
        for _ in tqdm(range(self.iterations), desc="fit gan", disable=not self.progress, leave=False):
            idx = torch.randint(
                0, len(real_all), (min(self.batch_size, len(real_all)),), generator=g, device=self.device
            )
            real, y = real_all[idx], labels[idx]
            z = torch.randn(len(idx), self.latent_size, generator=g, device=self.device)

            # Discriminator: logistic loss on augmented real/fake + R1 on (augmented) reals.
            fake = self._generate(self.generator, z, y).detach()
            real_aug = diff_augment(real, g, self.diffaugment).requires_grad_(True)
            d_real = self._discriminate(real_aug, y)
            d_fake = self._discriminate(diff_augment(fake, g, self.diffaugment), y)
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            (grad,) = torch.autograd.grad(d_real.sum(), real_aug, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            opt_d.zero_grad(set_to_none=True)
            (d_loss + 0.5 * self.r1_gamma * r1).backward()
            opt_d.step()

            # Generator: non-saturating loss through the same augmentation.
            z = torch.randn(len(idx), self.latent_size, generator=g, device=self.device)
            fake = self._generate(self.generator, z, y)
            g_loss = F.softplus(-self._discriminate(diff_augment(fake, g, self.diffaugment), y)).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            self.ema.update_parameters(self.generator)
            for key, value in (("d_loss", d_loss), ("g_loss", g_loss), ("r1", r1)):
                self.history[key].append(float(value.detach()))
        return self

    @torch.no_grad()
    def sample(self, label: int, n: int, real_images: torch.Tensor, real_ids: Sequence[str], seed: int) -> SampleBatch:
        """``n`` images of class ``label`` from the EMA generator; a GAN image has no real parent."""
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        self.ema.eval()
        out = []
        for start, stop in batches(n, 256):
            z = torch.randn(stop - start, self.latent_size, generator=g, device=self.device)
            y = torch.full((stop - start,), int(label), dtype=torch.long, device=self.device)
            out.append((self._generate(self.ema.module, z, y) + 1) / 2)
        images = torch.cat(out).clamp(0, 1).cpu() if out else torch.empty(0, self.in_channels, *self.image_size)
        return SampleBatch(images, [[] for _ in range(n)])
