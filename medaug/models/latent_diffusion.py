"""Class-conditional latent diffusion (Rombach et al. 2022) from MONAI's generative networks.

Stage 1: MONAI ``AutoencoderKL`` (L1 reconstruction + ``kl_weight`` x KL) compresses images to a
latent grid; latents are scaled by ``1 / std`` so that they have unit variance, as in the MONAI
generative tutorials. Stage 2: MONAI ``DiffusionModelUNet`` with a class embedding
(``num_class_embeds``) learns to predict the noise added by a ``DDPMScheduler`` (Ho et al. 2020).
Sampling runs the deterministic ``DDIMScheduler`` (Song et al. 2021) from pure noise.

**img2img** (SDEdit, Meng et al. 2022): the latent of a real image of the class is noised to
strength ``s`` in (0, 1] (``s = 1``: pure noise, ``s -> 0``: the image itself) and denoised from
there under the class condition; the real image is the parent of the new one.

**Context hook**: ``context_dim`` plus a ``context_fn(labels) -> (N, 1, context_dim)`` tensor turn
on the UNet's cross-attention, so that a text-guided variant (e.g. a local text encoder embedding a
prompt per class) plugs in without touching this class. Without it only the class embedding is used.

The training step and the sampling loops are written here rather than with MONAI's
``LatentDiffusionInferer`` because that inferer does not pass ``class_labels`` to the UNet and
cannot start the reverse process at an intermediate timestep (img2img).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from tqdm.auto import tqdm

from medaug.models.generator_base import ImageGenerator, SampleBatch, batches, seeded

_SCHEDULE = {"schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}


class ClassConditionalLDM(ImageGenerator):
    """AutoencoderKL + class-embedding DiffusionModelUNet, DDIM sampling and img2img.

    Args:
        in_channels, num_classes, image_size: the data (image_size divisible by 2 ** len(unet_channels)).
        ae_channels: AutoencoderKL channels; the latent is ``2 ** (len - 1)`` times smaller per side.
        latent_channels: channels of the latent grid.
        unet_channels: DiffusionModelUNet channels (attention at the deepest level).
        ae_iterations / unet_iterations: optimiser steps of the two stages.
        batch_size, lr: per stage.
        kl_weight: weight of the autoencoder's KL term.
        num_train_timesteps: length of the DDPM chain.
        ddim_steps: DDIM steps at sampling.
        img2img_strength: SDEdit strength ``s`` of ``sample_img2img``.
        context_dim, context_fn: the optional context-embedding hook (see the module docstring).
    """

    name = "ldm"
    sampling_only = frozenset({"ddim_steps", "img2img_strength"})

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int],
        *,
        ae_channels: Sequence[int] = (32, 64),
        latent_channels: int = 3,
        unet_channels: Sequence[int] = (32, 64),
        ae_iterations: int = 500,
        unet_iterations: int = 1500,
        batch_size: int = 32,
        lr: float = 2e-4,
        kl_weight: float = 1e-6,
        num_train_timesteps: int = 1000,
        ddim_steps: int = 50,
        img2img_strength: float = 0.6,
        context_dim: int | None = None,
        context_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **common: Any,
    ) -> None:
        # common: seed, device, progress, as ImageGenerator takes them
        super().__init__(in_channels, num_classes, image_size, **common)
        if not 0.0 < float(img2img_strength) <= 1.0:
            raise ValueError(f"ldm: img2img_strength must be in (0, 1], got {img2img_strength}")
        if (context_dim is None) != (context_fn is None):
            raise ValueError("ldm: context_dim and context_fn go together (both or neither)")
        factor = 2 ** (len(ae_channels) - 1) * 2 ** (len(unet_channels) - 1)
        if any(s % factor for s in self.image_size):
            raise ValueError(f"ldm: image_size {self.image_size} must be divisible by {factor} for these channels")
        self.ae_iterations, self.unet_iterations = int(ae_iterations), int(unet_iterations)
        self.batch_size, self.lr, self.kl_weight = int(batch_size), float(lr), float(kl_weight)
        self.ddim_steps, self.img2img_strength = int(ddim_steps), float(img2img_strength)
        self.context_fn = context_fn
        self.scale_factor = 1.0
        with seeded(self.seed):
            self.autoencoder = AutoencoderKL(
                spatial_dims=2,
                in_channels=in_channels,
                out_channels=in_channels,
                channels=tuple(ae_channels),
                latent_channels=int(latent_channels),
                num_res_blocks=1,
                norm_num_groups=16,
                attention_levels=(False,) * len(ae_channels),
                with_encoder_nonlocal_attn=False,
                with_decoder_nonlocal_attn=False,
            ).to(self.device)
            self.unet = DiffusionModelUNet(
                spatial_dims=2,
                in_channels=int(latent_channels),
                out_channels=int(latent_channels),
                channels=tuple(unet_channels),
                attention_levels=(False,) * (len(unet_channels) - 1) + (True,),
                num_res_blocks=1,
                num_head_channels=int(unet_channels[-1]),
                norm_num_groups=16,
                num_class_embeds=num_classes,
                with_conditioning=context_dim is not None,
                cross_attention_dim=context_dim,
            ).to(self.device)
        self.ddpm = DDPMScheduler(num_train_timesteps=int(num_train_timesteps), **_SCHEDULE)
        self.ddim = DDIMScheduler(num_train_timesteps=int(num_train_timesteps), clip_sample=False, **_SCHEDULE)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"autoencoder": self.autoencoder, "unet": self.unet}

    def extra_state(self) -> dict:
        return {"scale_factor": self.scale_factor}

    def load_extra_state(self, state: dict) -> None:
        self.scale_factor = float(state.get("scale_factor", 1.0))

    def _context(self, labels: torch.Tensor) -> torch.Tensor | None:
        return None if self.context_fn is None else self.context_fn(labels).to(self.device)

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latent means (the deterministic encoding used for diffusion and img2img)."""
        return (
            torch.cat([self.autoencoder.encode(x[a:b].to(self.device).float())[0] for a, b in batches(len(x), 256)])
            * self.scale_factor
        )

    @torch.no_grad()
    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.autoencoder.decode(z[a:b] / self.scale_factor) for a, b in batches(len(z), 256)])

    def fit(self, images: torch.Tensor, labels: torch.Tensor) -> ClassConditionalLDM:
        self.check_fit_inputs(images, labels)
        images, labels = images.to(self.device).float(), labels.to(self.device).long()
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        self.history = {"ae_loss": [], "unet_loss": []}
        bar = tqdm(
            total=self.ae_iterations + self.unet_iterations, desc="fit ldm", disable=not self.progress, leave=False
        )

        def draw():
            idx = torch.randint(0, len(images), (min(self.batch_size, len(images)),), generator=g, device=self.device)
            return images[idx], labels[idx]

        opt = torch.optim.Adam(self.autoencoder.parameters(), lr=self.lr * 5)
        self.autoencoder.train()
        for _ in range(self.ae_iterations):
            x, _ = draw()
            mu, sigma = self.autoencoder.encode(x)
            z = mu + sigma * torch.randn(mu.shape, generator=g, device=self.device)
            recon = self.autoencoder.decode(z)
            kl = 0.5 * torch.sum(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1, dim=(1, 2, 3)).mean()
            loss = F.l1_loss(recon, x) + self.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.history["ae_loss"].append(float(loss.detach()))
            bar.update(1)
        self.autoencoder.eval()
        latents = self._encode(images) / self.scale_factor
        self.scale_factor = float(1.0 / latents.std().clamp_min(1e-6))
        latents = latents * self.scale_factor

        opt = torch.optim.Adam(self.unet.parameters(), lr=self.lr * 5)
        self.unet.train()
        steps = self.ddpm.num_train_timesteps
        for _ in range(self.unet_iterations):
            idx = torch.randint(0, len(images), (min(self.batch_size, len(images)),), generator=g, device=self.device)
            z, y = latents[idx], labels[idx]
            noise = torch.randn(z.shape, generator=g, device=self.device)
            t = torch.randint(0, steps, (len(z),), generator=g, device=self.device)
            pred = self.unet(self.ddpm.add_noise(z, noise, t), t, context=self._context(y), class_labels=y)
            loss = F.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.history["unet_loss"].append(float(loss.detach()))
            bar.update(1)
        bar.close()
        self.unet.eval()
        return self

    @torch.no_grad()
    def _denoise(self, z: torch.Tensor, label: int, timesteps: torch.Tensor) -> torch.Tensor:
        y = torch.full((len(z),), int(label), dtype=torch.long, device=self.device)
        context = self._context(y)
        for t in timesteps:
            eps = self.unet(
                z, torch.full((len(z),), int(t), device=self.device, dtype=torch.long), context=context, class_labels=y
            )
            z, _ = self.ddim.step(eps, int(t), z)
        return z

    def _latent_shape(self) -> tuple[int, ...]:
        factor = 2 ** (len(self.autoencoder.encoder.channels) - 1)
        return (self.autoencoder.latent_channels, self.image_size[0] // factor, self.image_size[1] // factor)

    @torch.no_grad()
    def sample(self, label: int, n: int, real_images: torch.Tensor, real_ids: Sequence[str], seed: int) -> SampleBatch:
        """``n`` images of class ``label`` by DDIM from pure noise (no real parent)."""
        self.unet.eval()
        self.autoencoder.eval()
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        self.ddim.set_timesteps(self.ddim_steps)
        out = []
        for start, stop in batches(n, 128):
            z = torch.randn((stop - start, *self._latent_shape()), generator=g, device=self.device)
            out.append(self._decode(self._denoise(z, label, self.ddim.timesteps)))
        images = torch.cat(out).clamp(0, 1).cpu() if out else torch.empty(0, self.in_channels, *self.image_size)
        return SampleBatch(images, [[] for _ in range(n)])

    @torch.no_grad()
    def sample_img2img(
        self, label: int, n: int, real_images: torch.Tensor, real_ids: Sequence[str], seed: int
    ) -> SampleBatch:
        """SDEdit: ``n`` images, each from a real train image of class ``label`` (its parent), noised
        to ``img2img_strength`` and denoised under the class condition. Parents are drawn so that
        every real image is used about equally often."""
        if n and len(real_images) == 0:
            raise ValueError(f"ldm_img2img: class {label} has no train image to start from")
        self.unet.eval()
        self.autoencoder.eval()
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        rounds = -(-n // max(len(real_images), 1))
        order = torch.cat([torch.randperm(len(real_images), generator=g) for _ in range(rounds)])[:n] if n else []
        self.ddim.set_timesteps(self.ddim_steps)
        first = min(int(round(self.ddim_steps * (1.0 - self.img2img_strength))), self.ddim_steps - 1)
        timesteps = self.ddim.timesteps[first:]
        out = []
        for start, stop in batches(n, 128):
            z0 = self._encode(real_images[order[start:stop]])
            noise = torch.randn(z0.shape, generator=g, device=self.device)
            t = torch.full((len(z0),), int(timesteps[0]), dtype=torch.long, device=self.device)
            out.append(self._decode(self._denoise(self.ddim.add_noise(z0, noise, t), label, timesteps)))
        images = torch.cat(out).clamp(0, 1).cpu() if out else torch.empty(0, self.in_channels, *self.image_size)
        return SampleBatch(images, [[str(real_ids[int(k)])] for k in order])
