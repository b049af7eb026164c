"""Mixing augmentations as a training option: MixUp and CutMix on the images (MONAI's), and
manifold mixup on the penultimate features, each with the labels mixed in the same proportions.

They run in the trainer's ``prepare_batch`` (MONAI's hook for turning a batch into network input
and target), on training batches only: the evaluators keep MONAI's default. Targets become soft
labels (one-hot, then mixed); PyTorch's ``CrossEntropyLoss`` takes them as class probabilities,
so the class weights of ``medaug.pipelines.train.rebalance.make_loss`` still apply: each sample's loss
is ``-sum_c w_c y_c log p_c`` (averaged over the batch; with the dataset's balanced weights the
average weight is 1, so losses keep their scale).

Hand-written parts and why: MONAI's ``MixUp.__call__`` rejects (B, C) label tensors (it only mixes
3D/4D arrays) and ``CutMix.__call__`` mixes labels with the image mask instead of
``apply_on_labels``; and CutMix's box is clipped at the image border, so its Beta weight is not the
area kept. Here the images are mixed by MONAI's ``apply``, and the labels by the same weights and
permutation (MixUp) or by the area each image actually keeps (CutMix). Manifold mixup is not in
MONAI.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.engines.utils import PrepareBatch, PrepareBatchDefault, default_prepare_batch
from monai.transforms import CutMix, MixUp

__all__ = ["MIX_METHODS", "MixingPrepareBatch", "make_prepare_batch", "last_linear_layer"]

MIX_METHODS = ("none", "mixup", "cutmix", "manifold_mixup")
MIX_KEYS = {"method", "alpha", "prob"}


def last_linear_layer(network: torch.nn.Module) -> torch.nn.Linear:
    """The classifier's last ``nn.Linear``: its input is the penultimate feature vector."""
    linears = [m for m in network.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(
            f"augment#mix#method: manifold_mixup needs a network ending in a linear layer; "
            f"{type(network).__name__} has none"
        )
    return linears[-1]


class MixingPrepareBatch(PrepareBatch):
    """``prepare_batch`` for MONAI's ``SupervisedTrainer`` that mixes pairs of training samples.

    With probability ``prob`` per batch, each sample ``i`` is paired with sample ``perm[i]`` of a
    random permutation and a weight ``lam_i ~ Beta(alpha, alpha)``:

    - ``mixup`` (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018): images
      ``lam x_i + (1 - lam) x_perm``; MONAI's ``MixUp``.
    - ``cutmix`` (Yun et al., "CutMix", ICCV 2019): a box of area about ``1 - lam`` is pasted from
      ``x_perm``; MONAI's ``CutMix``; labels weighted by the area actually kept.
    - ``manifold_mixup`` (Verma et al., "Manifold Mixup: Better Representations by Interpolating
      Hidden States", ICML 2019): the images pass unchanged, and the penultimate features (the
      input of the last linear layer) are mixed, through a forward pre-hook that acts only in
      training mode and only on the batch it was prepared for.

    Labels become ``lam y_i + (1 - lam) y_perm`` of the one-hot labels (``kept`` instead of
    ``lam`` for CutMix). Unmixed batches keep their integer labels. Draws come from this object's
    own seeded ``RandomState``, so a seed fixes the mixing.
    """

    def __init__(
        self,
        method: str,
        num_classes: int,
        alpha: float = 0.4,
        prob: float = 1.0,
        network: torch.nn.Module | None = None,
        seed: int = 0,
    ) -> None:
        if method not in MIX_METHODS or method == "none":
            raise ValueError(f"augment#mix#method: {method!r} is not one of {MIX_METHODS[1:]}")
        if not alpha > 0:
            raise ValueError(f"augment#mix#alpha: must be positive, got {alpha!r}")
        if not 0 <= prob <= 1:
            raise ValueError(f"augment#mix#prob: must be in [0, 1], got {prob!r}")
        self.method, self.num_classes, self.alpha, self.prob = method, int(num_classes), float(alpha), float(prob)
        self.R = np.random.RandomState(seed)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        if method == "manifold_mixup":
            if network is None:
                raise ValueError("augment#mix#method: manifold_mixup needs the network")
            last_linear_layer(network).register_forward_pre_hook(self._mix_features)

    def _mix_features(self, module: torch.nn.Module, inputs: tuple):
        if not module.training or self._pending is None:
            return None
        lam, perm = self._pending
        self._pending = None
        features = inputs[0]
        lam = lam.to(features.device, features.dtype).view(-1, *([1] * (features.ndim - 1)))
        return (lam * features + (1 - lam) * features[perm.to(features.device)], *inputs[1:])

    def _mixer(self, cls, batch_size: int):
        mixer = cls(batch_size=batch_size, alpha=self.alpha)
        mixer.set_random_state(seed=int(self.R.randint(0, 2**31 - 1)))
        return mixer

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        images, labels = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if labels is None or self.R.rand() >= self.prob or len(images) < 2:
            return images, labels
        onehot = torch.nn.functional.one_hot(labels.reshape(-1).long(), self.num_classes).to(torch.float32)
        batch = len(images)
        if self.method == "manifold_mixup":
            lam = torch.from_numpy(self.R.beta(self.alpha, self.alpha, batch)).float()
            perm = torch.from_numpy(self.R.permutation(batch))
            self._pending = (lam, perm)
            kept = lam
        else:
            mixer = self._mixer(MixUp if self.method == "mixup" else CutMix, batch)
            # plain tensors: indexing a batched MetaTensor by the mixer's NumPy permutation fails in MONAI 1.6
            images = images.as_tensor() if isinstance(images, MetaTensor) else images
            mixer.randomize(images)
            lam, perm, _ = mixer._params  # the draw that apply() uses (Mixer documents randomize-then-apply)
            with warnings.catch_warnings():  # MONAI's CutMix indexes with a list; torch warns on every batch
                warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
                if self.method == "cutmix":
                    ids = (
                        torch.arange(batch, dtype=torch.float32)
                        .view(-1, *([1] * (images.ndim - 1)))
                        .expand(batch, 1, *images.shape[2:])
                    )
                    kept = (mixer.apply(ids) == ids).float().flatten(1).mean(1)
                else:
                    kept = lam
                images = mixer.apply(images)
        perm = torch.as_tensor(perm)
        kept = kept.view(-1, 1).to(onehot.device)
        targets = kept * onehot + (1 - kept) * onehot[perm.to(onehot.device)]
        return images, targets.to(device=images.device)


def make_prepare_batch(
    mix: Mapping | None, num_classes: int, network: torch.nn.Module | None = None, seed: int = 0
) -> PrepareBatch:
    """The trainer's ``prepare_batch`` for the bundle's ``augment#mix`` section
    (``{"method": "none" | "mixup" | "cutmix" | "manifold_mixup", "alpha": 0.4, "prob": 1.0}``)."""
    mix = dict(mix or {})
    unknown = set(mix) - MIX_KEYS
    if unknown:
        raise ValueError(f"augment#mix: unknown key(s) {sorted(unknown)}; expected {sorted(MIX_KEYS)}")
    method = mix.get("method", "none") or "none"
    if method not in MIX_METHODS:
        raise ValueError(f"augment#mix#method: {method!r} is not one of {MIX_METHODS}")
    if method == "none":
        return PrepareBatchDefault()
    return MixingPrepareBatch(
        method, num_classes, alpha=mix.get("alpha", 0.4), prob=mix.get("prob", 1.0), network=network, seed=seed
    )
