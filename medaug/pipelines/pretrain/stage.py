"""The pretraining stage: a zoo network learned without labels on an unlabeled pool, handed to the
trainer as ``pretrained_path``.

A bundle's ``pretrain`` section builds a :class:`PretrainStage`; ``"pretrained_path":
"$@pretrain.checkpoint()"`` gives the trainer its checkpoint (None for ``method: none``). Methods are
the entries of :data:`PRETRAIN_METHODS` (``simclr``: :mod:`.simclr`); another method is one entry
there, a fit function of the same signature.

The checkpoint is a full state dict **in the study network's own layout**: the network the bundle
builds (same name, channels, classes, image size), every tensor taken from the pretrained encoder
except the classification head (the tensors whose shape follows ``num_classes``), which keeps its
fresh initialisation; :func:`medaug.models.load_pretrained` loads it with nothing missing,
unexpected or mismatched.

Cached in ``<cache_dir>/<key>/`` (``model.pt``, ``pretrain.json``, ``pretrain_curves.png``,
``skipped.csv``), the key hashing the pool's fingerprint (:mod:`.pool`) with every setting that
changes the weights (method, network, image size, channels, classes, budget, loss, views, the
pretraining's own ``seed``, not the study's): a study grid pretrains once per network and every
seed and strategy reuses it. Written in a temporary folder renamed into place, so a killed run
leaves no half entry. The k-NN probe in ``pretrain.json`` is that of the run that fitted it.

MLflow: a fit gets its own run in the bundle's experiment (tag ``stage: pretrain``; loss per step,
probe per ``probe_every`` steps, wall time, pool size, artifacts); the training run records
``pretrain_method``, ``pretrain_cache_key`` and ``pretrain_cache_hit`` (parameters and tags) and
``pretrain/pretrain.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medaug.io.atomic import publish_folder, write_csv_atomic, write_json_atomic
from medaug.models import build_classifier
from medaug.pipelines.pretrain.pool import Pool, build_pool, pool_settings, study_images
from medaug.pipelines.pretrain.simclr import SimCLRSettings, fit_simclr, knn_probe, view_transform
from medaug.settings import SettingsError, check_choice
from medaug.transforms.presets import AugmentationPlan

logger = logging.getLogger("medaug.pretrain")

# pretrain#method -> fit(encoder, pool images, views, settings, seed, device, probe, progress) -> history;
# "none" pretrains nothing.
PRETRAIN_METHODS: dict[str, Callable | None] = {"none": None, "simclr": fit_simclr}
CACHE_VERSION = 1


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def head_keys(name: str, in_channels: int, spatial_size: Sequence[int], **kwargs) -> set[str]:
    """The state-dict keys of a zoo network whose shape follows ``num_classes``: its classification
    head. Found by building the network for 2 and 3 classes on the meta device (no memory, no
    initialisation cost) and comparing shapes."""
    with torch.device("meta"):
        two = build_classifier(name, in_channels, 2, spatial_size, **kwargs).state_dict()
        three = build_classifier(name, in_channels, 3, spatial_size, **kwargs).state_dict()
    return {k for k in two if two[k].shape != three[k].shape}


def study_layout_state(
    encoder: torch.nn.Module,
    name: str,
    in_channels: int,
    num_classes: int,
    spatial_size: Sequence[int],
    **kwargs,
) -> tuple[dict, list[str]]:
    """``(state dict of build_classifier(name, in_channels, num_classes, spatial_size, **kwargs), head
    keys)``: the encoder's tensors for every key but the head, whose fresh initialisation is kept."""
    target = build_classifier(name, in_channels, num_classes, spatial_size, **kwargs).state_dict()
    source = encoder.state_dict()
    if set(source) != set(target):  # the same class: a bug, not a setting
        raise RuntimeError(f"the pretrained {name} and the study's have different tensors")
    head = {k for k in target if source[k].shape != target[k].shape}
    if not head:  # an embedding as wide as the classes: the shapes do not tell the head
        head = head_keys(name, in_channels, spatial_size, **kwargs)
    state = {k: (v if k in head else source[k].detach().cpu().clone()) for k, v in target.items()}
    return state, sorted(head)


class PretrainStage:
    """The ``pretrain`` section of a bundle (see the module docstring).

    Args:
        study_data: the run's :class:`medaug.io.StudyData` (its train split in the pool, its
            val/test images kept out, its train/val split for the probe); None for a pool of
            folders only (``medaug pretrain``).
        method: a key of :data:`PRETRAIN_METHODS` (``none`` | ``simclr``).
        network: the zoo classifier (the bundle's ``classifier``).
        image_size, channels, num_classes: the study network's; ``num_classes`` defaults to the
            study data's.
        preset, overrides, allow: the augmentation plan the views are drawn from (the bundle's
            ``augment`` settings).
        steps, batch_size, lr, weight_decay, temperature, embedding_dim, projection_dim, min_crop,
            probe_every: see :class:`medaug.pipelines.pretrain.simclr.SimCLRSettings`.
        probe_k: neighbours of the k-NN probe.
        network_kwargs: further keyword arguments of the network, as the bundle's ``network_def``
            passes them (e.g. a ResNet ``stem``): the pretrained network must be the study's.
        seed: the pretraining's own seed (not the study's: every seed shares one pretraining).
        pool: ``{"study_train", "shipped", "folders", "max_images"}`` (:mod:`.pool`).
        cache_dir: where pretrainings are kept (shared by a study's runs).
        tracker: the training run's :class:`medaug.pipelines.tracking.RunTracker`, or None.
        device: where the pretraining runs.
        progress: progress bars.
    """

    def __init__(
        self,
        study_data=None,
        method: str = "none",
        network: str = "resnet18",
        image_size: Sequence[int] = (64, 64),
        channels: int = 1,
        num_classes: int | None = None,
        preset: str | os.PathLike = "generic",
        overrides: Mapping | None = None,
        allow: Sequence[str] | None = None,
        steps: int = 300,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        temperature: float = 0.5,
        embedding_dim: int = 128,
        projection_dim: int = 64,
        min_crop: float = 0.6,
        probe_every: int = 100,
        probe_k: int = 20,
        network_kwargs: Mapping | None = None,
        seed: int = 0,
        pool: Mapping | None = None,
        cache_dir: str | os.PathLike | None = None,
        tracker=None,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        check_choice("pretrain#method", method, PRETRAIN_METHODS)
        if int(steps) < 1:
            raise SettingsError("pretrain#steps", "must be at least 1", value=steps)
        if int(batch_size) < 2:
            raise SettingsError(
                "pretrain#batch_size", "must be at least 2 (a batch's other images are the negatives)", value=batch_size
            )
        if not 0 < float(min_crop) <= 1:
            raise SettingsError(
                "pretrain#min_crop", "must be in (0, 1]: the smallest crop side as a fraction", value=min_crop
            )
        if float(temperature) <= 0:
            raise SettingsError("pretrain#temperature", "must be above 0", value=temperature)
        self.data = study_data
        self.method = method
        self.network = str(network)
        self.image_size = [int(s) for s in image_size]
        self.channels = int(channels)
        if num_classes is None and study_data is None:
            raise ValueError("PretrainStage needs num_classes when it has no study_data")
        self.num_classes = int(num_classes if num_classes is not None else study_data.num_classes)
        self.plan_settings = {"preset": str(preset), "overrides": dict(overrides or {}), "allow": list(allow or [])}
        self.settings = SimCLRSettings(
            steps=int(steps),
            batch_size=int(batch_size),
            lr=float(lr),
            weight_decay=float(weight_decay),
            temperature=float(temperature),
            embedding_dim=int(embedding_dim),
            projection_dim=int(projection_dim),
            min_crop=float(min_crop),
            probe_every=int(probe_every),
        )
        self.probe_k = int(probe_k)
        self.network_kwargs = dict(network_kwargs or {})
        self.seed = int(seed)
        self.pool_settings = pool_settings(pool)
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "medaug_pretrain_cache"
        self.tracker = tracker
        self.device = torch.device(device)
        self.progress = progress
        self._pool: Pool | None = None
        self._done = False
        self._checkpoint: str | None = None
        self.info: dict = {}

    # -- what is asked -----------------------------------------------------------------------
    def plan(self) -> AugmentationPlan:
        return AugmentationPlan(image_size=self.image_size, keys="image", **self.plan_settings)

    def pool(self) -> Pool:
        """The unlabeled pool (built once)."""
        if self._pool is None:
            settings = self.pool_settings
            self._pool = build_pool(
                self.data,
                self.image_size,
                self.channels,
                study_train=bool(settings["study_train"]),
                shipped=bool(settings["shipped"]),
                folders=settings["folders"],
                max_images=settings["max_images"],
                seed=self.seed,
                progress=self.progress,
            )
        return self._pool

    def config(self) -> dict:
        """Every setting that changes the pretrained weights (the cache key's config part)."""
        return {
            "v": CACHE_VERSION,
            "method": self.method,
            "network": self.network,
            "image_size": self.image_size,
            "channels": self.channels,
            "num_classes": self.num_classes,
            "network_kwargs": self.network_kwargs,
            **{k: v for k, v in self.settings.as_dict().items() if k != "probe_every"},
            "augmentation": self.plan().to_yaml(),
            "seed": self.seed,
            "max_images": self.pool_settings["max_images"],
        }

    def cache_key(self) -> str:
        return _hash({"config": self.config(), "pool": self.pool().fingerprint()})

    def checkpoint(self) -> str | None:
        """The pretrained state dict's path (None for ``none``); fitted once, then read from the cache."""
        if not self._done:
            self._checkpoint = self._run()
            self._done = True
        return self._checkpoint

    # -- running -------------------------------------------------------------------------------
    def _run(self) -> str | None:
        if self.method == "none":
            self._log_training_run(None, False)
            return None
        pool = self.pool()
        if len(pool) < 2:
            raise SettingsError(
                "pretrain#pool",
                f"the pretraining pool holds {len(pool)} usable image(s) ({len(pool.skipped)} file(s) skipped)",
                "turn on study_train or shipped, or name folders with images",
            )
        key = self.cache_key()
        folder = self.cache_dir / key
        hit = (folder / "model.pt").is_file() and (folder / "pretrain.json").is_file()
        if hit:
            logger.info("pretrain %s: cache hit %s (%s)", self.method, key, folder)
        else:
            self._fit(pool, key, folder)
        self.info = json.loads((folder / "pretrain.json").read_text())
        self._log_training_run(folder, hit, key)
        return str(folder / "model.pt")

    def _probe(self):
        """The k-NN probe on the study's train/val split (unaugmented, as pool images are read)."""
        if self.data is None:
            return None
        train, val = self.data.train, self.data.val

        def images(entries):
            return torch.stack([image for _, image in study_images(entries, self.channels, self.image_size)])

        return knn_probe(
            images(train), [e["label"] for e in train], images(val), [e["label"] for e in val], self.probe_k
        )

    def _fit(self, pool: Pool, key: str, folder: Path) -> None:
        fit = PRETRAIN_METHODS[self.method]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=f".{key}."))
        try:
            start = time.perf_counter()
            devices = [self.device] if self.device.type == "cuda" else []
            # a private random state: a cache hit and a fit leave the trainer's random numbers alike
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                encoder = build_classifier(
                    self.network, self.channels, self.settings.embedding_dim, self.image_size, **self.network_kwargs
                ).to(self.device)
                views = view_transform(self.plan().transforms(), self.image_size, self.settings.min_crop, self.seed)
                history = fit(
                    encoder, pool.images, views, self.settings, self.seed, self.device, self._probe(), self.progress
                )
                state, head = study_layout_state(
                    encoder.cpu(), self.network, self.channels, self.num_classes, self.image_size, **self.network_kwargs
                )
            torch.save(state, tmp / "model.pt")
            seconds = time.perf_counter() - start
            info = {
                "key": key,
                "method": self.method,
                "network": self.network,
                "config": self.config(),
                "probe_every": self.settings.probe_every,
                "pool": pool.summary(),
                "pool_settings": self.pool_settings,
                "head_keys": head,
                "loss": history["loss"],
                "probe": history["probe"],
                "seconds": round(seconds, 3),
                "device": str(self.device),
            }
            write_json_atomic(tmp / "pretrain.json", info)
            write_csv_atomic(tmp / "skipped.csv", pool.skipped, ["path", "reason"])
            plot_curves(history, tmp / "pretrain_curves.png", f"{self.method} {self.network}")
            publish_folder(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info(
            "pretrain %s %s: %d steps on %d images in %.1f s",
            self.method,
            self.network,
            self.settings.steps,
            len(pool),
            seconds,
        )
        self._log_fit_run(folder, json.loads((folder / "pretrain.json").read_text()))

    # -- reporting -----------------------------------------------------------------------------
    def _log_fit_run(self, folder: Path, info: dict) -> None:
        """The fit's own MLflow run, beside the training run in its experiment."""
        if self.tracker is None or self.tracker.run_id is None:
            return
        run = self.tracker.stage_run(
            f"pretrain-{self.method}-{self.network}-{info['key'][:8]}",
            folder,
            {"stage": "pretrain", "classifier": self.network, "pretrain_method": self.method},
        )
        try:
            run.log_params(
                {
                    "pretrain_cache_key": info["key"],
                    **{f"pretrain.{k}": v for k, v in info["config"].items() if k != "augmentation"},
                    "pretrain.preset": self.plan_settings["preset"],
                    **{f"pretrain.pool.{k}": v for k, v in self.pool_settings.items()},
                }
            )
            run.log_metric_history("pretrain_loss", list(enumerate(info["loss"], 1)))
            for name in sorted({k for p in info["probe"] for k in p if k != "step"}):
                run.log_metric_history(f"pretrain_{name}", [(p["step"], p[name]) for p in info["probe"]])
            pool = info["pool"]
            run.log_metrics(
                {
                    "pretrain_seconds": info["seconds"],
                    "pretrain_pool_size": pool["size"],
                    "pretrain_pool_excluded_val_test": pool["excluded_val_test"],
                    "pretrain_pool_skipped": pool["skipped"],
                }
            )
            for name in ("pretrain.json", "pretrain_curves.png", "skipped.csv"):
                run.log_artifact(folder / name)
        except Exception as err:
            run.fail(err)
            raise
        run.end()

    def _log_training_run(self, folder: Path | None, hit: bool, key: str = "") -> None:
        if self.tracker is None or self.tracker.run_id is None:
            return
        values = {"pretrain_method": self.method, "pretrain_cache_key": key, "pretrain_cache_hit": hit}
        self.tracker.log_params(values)
        self.tracker.set_tags(values)
        if folder is not None:
            self.tracker.log_metrics(
                {"pretrain_pool_size": self.info["pool"]["size"], "pretrain_seconds": self.info["seconds"]}
            )
            self.tracker.log_artifact(folder / "pretrain.json", "pretrain")


def plot_curves(history: Mapping, path: Path, title: str) -> Path:
    """Loss per step and probe accuracy per probe, side by side."""
    from medaug.pipelines.evaluate.plots import new_figure, save_figure

    fig = new_figure(9, 3.2)
    loss_ax, probe_ax = fig.subplots(1, 2)
    loss = np.asarray(history["loss"], dtype=float)
    loss_ax.plot(np.arange(1, len(loss) + 1), loss, lw=1)
    loss_ax.set(xlabel="step", ylabel="contrastive loss", title=f"{title}: loss")
    probe = history.get("probe") or []
    if probe:
        steps = [p["step"] for p in probe]
        for name in sorted({k for p in probe for k in p if k != "step"}):
            probe_ax.plot(steps, [p.get(name, np.nan) for p in probe], marker="o", label=name.replace("_", " "))
        probe_ax.legend(fontsize=8)
    probe_ax.set(xlabel="step", ylabel="val balanced accuracy", title="k-NN probe (study train -> val)", ylim=(0, 1))
    return save_figure(fig, path)
