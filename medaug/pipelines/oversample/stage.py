"""The oversampling stage: new minority-class training images, from the train split only.

A bundle's ``oversample`` section builds an :class:`OversampleStage`; its :meth:`OversampleStage.run`
returns the train datalist the trainer uses (real train images + new ones marked ``synthetic: true``)
and the labels the loss and the sampler balance on. Methods:

- ``none``: the train split as it is;
- ``random``: copies of randomly drawn real train images of the class (random oversampling);
- a generator of :data:`medaug.models.GENERATORS` (:mod:`medaug.models.registry`), its settings in
  the section the registry names: ``gan``: :class:`medaug.models.cgan.ConditionalGAN`;
  ``vae_interp``: :class:`medaug.models.class_vae.ClassVAEInterpolation` (latent interpolation of
  same-class pairs); ``vae``: the same fitted VAEs decoding draws from their prior N(0, I);
  ``ldm`` / ``ldm_img2img``: :class:`medaug.models.latent_diffusion.ClassConditionalLDM`, DDIM from
  noise or SDEdit from real images (both share one fitted model);
- ``hybrid``: a ``fraction`` of the new images from ``hybrid.generator``, the rest copies of real
  images passed through the bundle's train ``augmentation``; the cost of each part is reported.

The stage only orchestrates: it looks the method up in the registry (class, settings section,
sampling call; which settings are sampling-only the class says), fits, samples, resizes, writes and
caches. Adding a generator is one file in :mod:`medaug.models` plus one line in
:data:`medaug.models.GENERATORS`, and its settings section in the bundle's ``oversample``; nothing here.

How many (``target``): ``balance`` tops every class up to the largest; ``multiplier`` makes each
oversampled class ``multiplier`` times its train count; ``count`` adds ``count`` images per
oversampled class (an int, or ``{class name: n}``). ``classes`` names the classes to oversample
(default: every class smaller than the largest).

Nothing but train entries is ever read: generators are fitted on, interpolate between and start
img2img from train images of the class only, and the datalists for val/test are not touched.

Outputs (in ``<cache_dir>/samples/<key>/``): one PNG per new image, ``manifest.csv`` (id, class,
generator, generator checkpoint hash, seed, parent real image ids, nearest real train image and its
pixel distance, near-copy flag) and ``summary.json`` (counts, costs, quality metrics). Fitted
generators live in ``<cache_dir>/generators/<key>/``. Both keys hash the relevant configuration
with the fingerprint of the train split (labels + pixel hashes), so an identical rerun (e.g. the
same oversampling in a study grid with other classifiers) reuses them and any change refits.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image
from tqdm.auto import tqdm

from medaug.io.atomic import publish_folder, write_csv_atomic, write_json_atomic
from medaug.io.hashing import file_sha256
from medaug.io.loader import read_entry_image
from medaug.io.npz import parse_npz_ref
from medaug.models.generator_base import ImageGenerator, SampleBatch, seeded
from medaug.models.registry import GENERATORS, GeneratorSpec, generator_sections, generator_spec
from medaug.pipelines.oversample.batches import resize_batch, to_uint8
from medaug.pipelines.oversample.cost import measure
from medaug.pipelines.oversample.quality_metrics import nearest_real

logger = logging.getLogger("medaug.oversample")

# The methods that need no generator; every other one but "hybrid" is a registered generator.
COPY_METHODS = ("none", "random")


def known_methods() -> tuple[str, ...]:
    """Every ``oversample#method``: ``none``, ``random``, the registered generators, ``hybrid``."""
    return (*COPY_METHODS, *GENERATORS, "hybrid")


METHODS = known_methods()  # as registered at import: none random gan vae vae_interp ldm ldm_img2img hybrid
TARGETS = ("balance", "multiplier", "count")
MANIFEST_COLUMNS = (
    "id",
    "class",
    "label",
    "file",
    "generator",
    "generator_checkpoint_sha256",
    "seed",
    "parent_ids",
    "nearest_real_id",
    "nearest_real_distance",
    "near_copy",
    "kept",
)
CACHE_VERSION = 1
REAL_PROVENANCE = {"synthetic_id": "", "generator": "", "seed": -1, "parents": ""}


def _blank(key: str, value):
    """An empty value of the same type, for keys a synthetic entry does not have (see ``train``)."""
    if isinstance(value, bool):
        return False
    if key == "frame":  # a PNG has one frame: index 0 where real entries carry frame numbers
        return 0 if isinstance(value, int) else value
    if isinstance(value, int):
        return -1
    if isinstance(value, float):
        return float("nan")
    return "" if isinstance(value, str) else value


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def train_fingerprint(train: Sequence[Mapping]) -> str:
    """SHA-256 over (label, pixel hash, frame) of the train entries: changes with any train image or
    label, not with val/test or with file moves."""
    keys = sorted(f"{e['label']}|{e.get('pixel_hash') or e['image']}|{e.get('frame')}" for e in train)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def real_id(entry: Mapping, dataset_dir: str | os.PathLike | None = None) -> str:
    """Short, stable id of a real image for manifests: ``archive.npz#train/12`` or the file path
    relative to the dataset folder (``@frame`` appended for a chosen frame)."""
    ref = str(entry["image"])
    parsed = parse_npz_ref(ref)
    if parsed is not None:
        text = f"{Path(parsed[0]).name}#{parsed[1]}/{parsed[2]}"
    else:
        text = os.path.relpath(ref, dataset_dir) if dataset_dir and os.path.isabs(ref) else ref
    return text if entry.get("frame") is None else f"{text}@{entry['frame']}"


def requested_counts(
    train_counts: Mapping[int, int],
    target: str = "balance",
    multiplier: float = 2.0,
    count: int | Mapping[str, int] | None = None,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] = (),
) -> dict[int, int]:
    """New images per class label for a ``target`` (see the module docstring)."""
    if target not in TARGETS:
        raise ValueError(f"oversample target {target!r} is not one of {TARGETS}")
    largest = max(train_counts.values())
    chosen = list(classes) if classes is not None else [c for c, n in train_counts.items() if n < largest]
    out = {c: 0 for c in train_counts}
    for c in chosen:
        n = train_counts[c]
        if target == "balance":
            out[c] = largest - n
        elif target == "multiplier":
            if float(multiplier) < 1:
                raise ValueError(f"oversample multiplier must be >= 1, got {multiplier}")
            out[c] = int(round((float(multiplier) - 1.0) * n))
        else:
            if count is None:
                raise ValueError("oversample target 'count' needs 'count' (an int or {class name: n})")
            value = count.get(class_names[c], 0) if isinstance(count, Mapping) else count
            if int(value) < 0:
                raise ValueError(f"oversample count must be >= 0, got {value}")
            out[c] = int(value)
    return out


def describe_transforms(augmentation, depth: int = 3):
    """A stable description of a list/Compose of transforms for the cache key of ``hybrid``: class
    names and plain settings, recursing into the array transforms a dictionary transform wraps
    (e.g. ``RandFlipd.flipper.spatial_axis``). Describe transforms before using them: some keep
    their last random draw as attributes."""
    if isinstance(augmentation, (int, float, str, bool)) or augmentation is None:
        return augmentation
    if isinstance(augmentation, (list, tuple)):
        return [describe_transforms(a, depth) for a in augmentation]
    if isinstance(augmentation, Compose):
        return describe_transforms(list(augmentation.transforms), depth)
    if isinstance(augmentation, (np.ndarray, torch.Tensor)):
        return augmentation.tolist()
    if depth == 0 or not hasattr(augmentation, "__dict__"):
        return type(augmentation).__name__
    settings = {
        k: describe_transforms(v, depth - 1)
        for k, v in sorted(vars(augmentation).items())
        if not k.startswith("_") and k != "R"
    }
    return [type(augmentation).__name__, settings]


@dataclass
class OversampleResult:
    """What the trainer needs: the train datalist (real + synthetic) and its labels."""

    train: list[dict]
    synthetic: list[dict] = field(default_factory=list)
    manifest_path: Path | None = None
    cache_key: str | None = None
    cache_hit: bool = False
    summary: dict = field(default_factory=dict)

    @property
    def train_labels(self) -> np.ndarray:
        return np.array([e["label"] for e in self.train], dtype=np.int64)


class OversampleStage:
    """The ``oversample`` section of a bundle (see the module docstring).

    Args:
        study_data: the :class:`medaug.io.StudyData` of the run; only its train split is used.
        method: one of :data:`METHODS` (or a generator registered later: :func:`known_methods`).
        target: one of :data:`TARGETS`; ``multiplier``, ``count``, ``classes`` as described above.
        image_size: (H, W) the generators are trained at; new images are written at the train
            images' own (most common) size.
        seed: seeds fitting and sampling.
        hybrid: ``{"generator": "gan" | "vae" | "vae_interp" | "ldm" | "ldm_img2img", "fraction": 0.5}``
            (any registered generator).
        augmentation: the bundle's train augmentation (dictionary transforms on ``"image"``), used
            by ``hybrid`` for its augmented copies.
        quality: ``{"enabled": bool, "feature_epochs": int, "feature_network_path": str | None,
            "near_copy_threshold": float | None, "drop_near_copies": bool}`` (see
            :mod:`medaug.pipelines.oversample.quality`).
        cache_dir: where fitted generators and samples are kept (shared by the runs of a study).
        run_dir: this run's folder (``oversample.json``, logged to MLflow).
        tracker: a :class:`medaug.pipelines.tracking.tracker.RunTracker` (metrics, tags, artifacts) or None.
        channels: image channels (1 or 3, as the bundle's ``channels``).
        device: where generators run.
        progress: tqdm bars for fitting and sampling.
        **generator_settings: one section per registered generator, named as the registry's
            ``section`` (:func:`medaug.models.generator_sections`: ``gan``, ``vae_interp``, ``ldm``), with
            the keyword arguments of its class; ``vae_interp`` also serves ``vae``, ``ldm`` also
            ``ldm_img2img``. A missing section means the class's defaults.
    """

    def __init__(
        self,
        study_data,
        method: str = "none",
        target: str = "balance",
        multiplier: float = 2.0,
        count: int | Mapping[str, int] | None = None,
        classes: Sequence[str] | None = None,
        image_size: Sequence[int] = (32, 32),
        seed: int = 0,
        hybrid: Mapping | None = None,
        augmentation=None,
        quality: Mapping | None = None,
        cache_dir: str | os.PathLike | None = None,
        run_dir: str | os.PathLike | None = None,
        tracker=None,
        channels: int = 1,
        device: str | torch.device = "cpu",
        progress: bool = True,
        **generator_settings: Mapping | None,
    ) -> None:
        if method not in known_methods():
            raise ValueError(f"oversample method {method!r} is not one of {known_methods()}")
        sections = generator_sections()
        unknown_sections = sorted(set(generator_settings) - set(sections))
        if unknown_sections:
            raise ValueError(
                f"oversample settings {unknown_sections} are no generator's section: the sections are {sections}"
            )
        if target not in TARGETS:
            raise ValueError(f"oversample target {target!r} is not one of {TARGETS}")
        if channels not in (1, 3):
            raise ValueError(f"oversample writes PNG images: channels must be 1 or 3, got {channels}")
        self.data = study_data
        self.method, self.target, self.multiplier, self.count = method, target, multiplier, count
        self.class_names = list(study_data.class_names)
        unknown = [c for c in (classes or []) if c not in self.class_names]
        if unknown:
            raise ValueError(f"oversample classes {unknown} are not among the classes {self.class_names}")
        self.classes = None if classes is None else [self.class_names.index(c) for c in classes]
        self.image_size = tuple(int(s) for s in image_size)
        self.seed = int(seed)
        self.generator_args = {section: dict(generator_settings.get(section) or {}) for section in sections}
        self.hybrid = {"generator": "vae_interp", "fraction": 0.5, **dict(hybrid or {})}
        if method == "hybrid":
            if self.hybrid["generator"] not in GENERATORS:
                raise ValueError(
                    f"hybrid generator {self.hybrid['generator']!r} is not a generative method: "
                    f"one of {tuple(GENERATORS)}"
                )
            if not 0.0 <= float(self.hybrid["fraction"]) <= 1.0:
                raise ValueError(f"hybrid fraction must be in [0, 1], got {self.hybrid['fraction']}")
        self.augmentation = augmentation
        # Described now, before any use: random transforms keep their last random draw as state.
        self._augmentation_description = describe_transforms(augmentation)
        self.quality = {
            "enabled": True,
            "feature_epochs": 5,
            "feature_network_path": None,
            "near_copy_threshold": None,
            "drop_near_copies": False,
            **dict(quality or {}),
        }
        self.run_dir = Path(run_dir) if run_dir else None
        base = Path(cache_dir) if cache_dir else (self.run_dir or Path(tempfile.gettempdir())) / "oversample_cache"
        self.cache_dir = base
        self.tracker = tracker
        self.channels = int(channels)
        self.device = torch.device(device)
        self.progress = progress
        self._result: OversampleResult | None = None

    # -- what is asked -----------------------------------------------------------------------
    @property
    def train(self) -> list[dict]:
        """Copies of the real train entries (the study's datalists are never modified), with the
        provenance keys of synthetic entries left blank: a batch collates only items whose keys match."""
        return [{**e, "synthetic": bool(e.get("synthetic", False)), **REAL_PROVENANCE} for e in self.data.train]

    def counts(self) -> dict[int, int]:
        tally = Counter(e["label"] for e in self.data.train)
        train_counts = {c: tally.get(c, 0) for c in range(len(self.class_names))}
        return requested_counts(train_counts, self.target, self.multiplier, self.count, self.classes, self.class_names)

    @property
    def _generative_method(self) -> str:
        """The method that makes the generated images (``hybrid``: its ``generator``)."""
        return self.hybrid["generator"] if self.method == "hybrid" else self.method

    def _generator(self) -> GeneratorSpec | None:
        """The registry entry of this run's generator; None for ``none`` and ``random``."""
        return None if self.method in COPY_METHODS else generator_spec(self._generative_method)

    def _output_size(self) -> tuple[int, int]:
        sizes = Counter((int(e["height"]), int(e["width"])) for e in self.data.train)
        return sizes.most_common(1)[0][0]

    def fit_key(self) -> str | None:
        spec = self._generator()
        if spec is None:
            return None
        args = {k: v for k, v in self.generator_args[spec.section].items() if k not in spec.sampling_only}
        return _hash(
            {
                "v": CACHE_VERSION,
                "generator": spec.section,  # methods with one section share one fitted generator
                "args": args,
                "image_size": self.image_size,
                "seed": self.seed,
                "channels": self.channels,
                "train": train_fingerprint(self.data.train),
            }
        )

    def sample_key(self) -> str:
        spec = self._generator()
        config = {
            "v": CACHE_VERSION,
            "method": self.method,
            "counts": self.counts(),
            "seed": self.seed,
            "fit": self.fit_key(),
            "sampling": self.generator_args[spec.section] if spec else None,
            "output_size": self._output_size(),
            "channels": self.channels,
            "quality": self.quality,
            "train": train_fingerprint(self.data.train),
        }
        if self.method == "hybrid":
            config["hybrid"] = self.hybrid
            config["augmentation"] = self._augmentation_description
        return _hash(config)

    # -- running -------------------------------------------------------------------------------
    def run(self) -> OversampleResult:
        """Oversample once (later calls return the same result)."""
        if self._result is None:
            self._result = self._run()
        return self._result

    def _run(self) -> OversampleResult:
        if self.method == "none":
            result = OversampleResult(self.train, summary={"method": "none"})
            self._log(result)
            return result
        key = self.sample_key()
        folder = self.cache_dir / "samples" / key
        hit = (folder / "summary.json").is_file()
        if hit:
            logger.info("oversample: cache hit %s (%s)", key, folder)
        else:
            self._generate(key, folder)
        summary = json.loads((folder / "summary.json").read_text())
        template = self.data.train[0]
        synthetic = [
            {
                **{k: _blank(k, v) for k, v in template.items()},
                "modality": template.get("modality"),
                **self._entry(row, folder),
            }
            for row in summary["entries"]
            if row["kept"]
        ]
        result = OversampleResult(
            self.train + synthetic,
            synthetic,
            folder / "manifest.csv",
            key,
            hit,
            {k: v for k, v in summary.items() if k != "entries"},
        )
        self._log(result)
        return result

    def _entry(self, row: Mapping, folder: Path) -> dict:
        return {
            "image": str(folder / row["file"]),
            "label": int(row["label"]),
            "class_name": row["class"],
            "patient_id": f"synthetic:{row['id']}",
            "split": "train",
            "source": f"synthetic:{row['generator']}",
            "synthetic": True,
            "synthetic_id": row["id"],
            "generator": row["generator"],
            "seed": int(row["seed"]),
            "parents": " ".join(row["parent_ids"]),
            "height": int(row["height"]),
            "width": int(row["width"]),
            "pixel_hash": row["pixel_hash"],
        }

    def _real_images(self, entries: Sequence[Mapping], size: Sequence[int]) -> torch.Tensor:
        """Pixels of train entries, (N, C, H, W) at ``size``; the only place images are read."""
        out = []
        for e in tqdm(entries, desc="read train images", disable=not self.progress, leave=False):
            if e["split"] != "train" or e.get("synthetic"):
                raise AssertionError(f"oversample read a non-train or synthetic entry: {e['image']}")
            pixels, _ = read_entry_image(str(e["image"]), channels=self.channels, frame=e.get("frame"))
            out.append(resize_batch(torch.from_numpy(pixels)[None], size, mode="area")[0])
        return torch.stack(out) if out else torch.empty(0, self.channels, *size)

    def _fitted_generator(
        self, spec: GeneratorSpec, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[ImageGenerator, dict]:
        gen = spec.generator(
            self.channels,
            len(self.class_names),
            self.image_size,
            seed=self.seed,
            device=self.device,
            progress=self.progress,
            **self.generator_args[spec.section],
        )
        folder = self.cache_dir / "generators" / self.fit_key()
        checkpoint, info_path = folder / "generator.pt", folder / "fit.json"
        if info_path.is_file() and checkpoint.is_file():
            gen.load(checkpoint)
            info = json.loads(info_path.read_text())
            info["cache_hit"] = True
            return gen, info
        with measure(self.device) as cost, seeded(self.seed):  # any global-RNG use inside is seeded too
            gen.fit(images, labels)
        gen.save(checkpoint)
        info = {
            "generator": spec.section,
            "fit": cost.as_dict(),
            "checkpoint_sha256": file_sha256(checkpoint),
            "final_losses": {k: v[-1] for k, v in gen.history.items() if v},
        }
        write_json_atomic(info_path, info)
        info["cache_hit"] = False
        return gen, info

    def _rows(self, batch: SampleBatch, label: int, generator: str, sha: str) -> list[dict]:
        """One manifest row (before file names) per new image of ``batch``."""
        seed = self._class_seed(label, generator)
        return [
            {"label": label, "generator": generator, "parent_ids": p, "seed": seed, "sha": sha} for p in batch.parents
        ]

    def _class_seed(self, label: int, part: str) -> int:
        return int(np.random.SeedSequence([self.seed, label, sum(map(ord, part))]).generate_state(1)[0])

    def _generate(self, key: str, folder: Path) -> None:
        train = self.data.train
        out_size = self._output_size()
        labels = torch.tensor([e["label"] for e in train], dtype=torch.long)
        ids = [real_id(e, self.data.dataset_dir) for e in train]
        native = self._real_images(train, out_size)
        counts = self.counts()
        method = self._generative_method
        spec = self._generator()
        n_gen = {c: (n if spec else 0) for c, n in counts.items()}
        n_aug = {c: 0 for c in counts}
        if self.method == "hybrid":
            n_gen = {c: int(round(float(self.hybrid["fraction"]) * n)) for c, n in counts.items()}
            n_aug = {c: counts[c] - n_gen[c] for c in counts}
        costs: dict[str, dict] = {}
        gen, info = None, {}
        if spec is not None and any(n_gen.values()):
            small = resize_batch(native, self.image_size, mode="area")
            gen, info = self._fitted_generator(spec, small, labels)
            costs["fit"] = {**info["fit"], "cached": info["cache_hit"]}
        tmp = Path(tempfile.mkdtemp(dir=self._ensure(self.cache_dir / "samples"), prefix=f".{key}."))
        rows: list[dict] = []
        images: list[torch.Tensor] = []
        try:
            with measure(self.device) as sample_cost:
                for c in range(len(self.class_names)):
                    own = (labels == c).nonzero().flatten()
                    own_ids = [ids[i] for i in own]
                    if n_gen[c]:
                        batch = self._sample(gen, method, c, n_gen[c], native[own], own_ids)
                        images.append(batch.images)
                        rows += self._rows(batch, c, method, info.get("checkpoint_sha256", ""))
            costs["sample"] = sample_cost.as_dict()
            with measure(self.device) as copy_cost:
                for c in range(len(self.class_names)):
                    own = (labels == c).nonzero().flatten()
                    kind = "random" if self.method == "random" else "augmentation"
                    n = counts[c] if self.method == "random" else n_aug[c]
                    if n:
                        batch = self._copies(native[own], [ids[i] for i in own], c, n, augment=kind == "augmentation")
                        images.append(batch.images)
                        rows += self._rows(batch, c, kind, sha="")
            if self.method in ("random", "hybrid"):
                costs["random_copies" if self.method == "random" else "augmented_copies"] = copy_cost.as_dict()
            new = torch.cat(images) if images else torch.empty(0, self.channels, *out_size)
            self._write(tmp, new, rows, train, native, ids, costs, counts, out_size)
            publish_folder(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _ensure(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _sample(
        self, gen: ImageGenerator, method: str, label: int, n: int, real: torch.Tensor, real_ids: Sequence[str]
    ) -> SampleBatch:
        small = resize_batch(real, self.image_size, mode="area")
        draw = getattr(gen, generator_spec(method).draw)
        with seeded(self._class_seed(label, method)):
            batch = draw(label, n, small, real_ids, seed=self._class_seed(label, method))
        if len(batch.images) != n:
            raise RuntimeError(f"{method} returned {len(batch.images)} images for class {label}, {n} requested")
        return SampleBatch(resize_batch(batch.images, real.shape[-2:], mode="area"), batch.parents)

    def _copies(self, real: torch.Tensor, real_ids: Sequence[str], label: int, n: int, augment: bool) -> SampleBatch:
        """``n`` copies of real images of one class, each real image used about equally often;
        passed through the bundle's augmentation when ``augment``."""
        if len(real) == 0:
            raise ValueError(f"class {self.class_names[label]!r} has no train image to copy")
        part = "augmentation" if augment else "random"
        g = torch.Generator().manual_seed(self._class_seed(label, part))
        rounds = -(-n // len(real))
        order = torch.cat([torch.randperm(len(real), generator=g) for _ in range(rounds)])[:n]
        out = real[order].clone()
        if augment:
            if not self.augmentation:
                raise ValueError("hybrid needs the bundle's 'augmentation' transforms for its augmented copies")
            # A private copy: seeding it must not touch the random state of the trainer's transforms.
            transform = copy.deepcopy(self.augmentation)
            transform = transform if isinstance(transform, Compose) else Compose(list(transform))
            transform.set_random_state(seed=self._class_seed(label, part) % (2**32))
            out = torch.stack(
                [
                    torch.as_tensor(transform({"image": MetaTensor(img)})["image"]).float().clamp(0, 1)
                    for img in tqdm(out, desc="augmented copies", disable=not self.progress, leave=False)
                ]
            )
        return SampleBatch(out, [[str(real_ids[int(k)])] for k in order])

    def _write(
        self,
        folder: Path,
        new: torch.Tensor,
        rows: list[dict],
        train,
        native: torch.Tensor,
        ids,
        costs,
        counts,
        out_size,
    ) -> None:
        """PNG files, nearest real train image per new image, quality report, manifest, summary."""
        per_class = Counter()
        for row, image in zip(tqdm(rows, desc="write synthetic images", disable=not self.progress, leave=False), new):
            c = row["label"]
            name = self.class_names[c]
            row["id"] = f"{self.method}-{name}-{per_class[c]:05d}"
            per_class[c] += 1
            row["class"], row["file"] = name, f"{name}/{row['id']}.png"
            pixels = to_uint8(image)
            (folder / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / row["file"])
            # What a reader of the PNG sees, for the same pixel hash as real entries.
            row["pixel_hash"] = hashlib.sha1((pixels.astype(np.float32) / 255.0).tobytes()).hexdigest()
            row["height"], row["width"] = out_size
            row["generator_checkpoint_sha256"] = row.pop("sha")
        written = (
            torch.from_numpy(
                np.stack([np.asarray(Image.open(folder / r["file"]), dtype=np.float32) / 255.0 for r in rows])
            )
            if rows
            else torch.empty(0, *out_size)
        )
        if written.ndim == 3:
            written = written[:, None]
        elif written.ndim == 4 and written.shape[-1] == 3:
            written = written.permute(0, 3, 1, 2)
        nearest, distance = nearest_real(written, native) if rows else ([], [])
        for row, k, d in zip(rows, nearest, distance):
            row["nearest_real_id"], row["nearest_real_distance"] = ids[int(k)], round(float(d), 6)
        metrics, near = {}, set()
        if self.quality["enabled"] and rows:
            metrics, near = self._assess(folder, written, rows, native, train, ids)
        drop = bool(self.quality["drop_near_copies"])
        for row in rows:
            row["near_copy"] = row["id"] in near
            row["kept"] = not (drop and row["near_copy"])
        manifest_rows = [{**r, "parent_ids": " ".join(r["parent_ids"])} for r in rows]
        write_csv_atomic(folder / "manifest.csv", manifest_rows, MANIFEST_COLUMNS)
        kept = Counter(self.class_names[r["label"]] for r in rows if r["kept"])
        summary = {
            "method": self.method,
            "target": self.target,
            "seed": self.seed,
            "image_size": list(self.image_size),
            "output_size": list(out_size),
            "requested": {self.class_names[c]: n for c, n in counts.items()},
            "added": {name: kept.get(name, 0) for name in self.class_names},
            "near_copies": len(near),
            "dropped_near_copies": sum(not r["kept"] for r in rows),
            "hybrid": self.hybrid if self.method == "hybrid" else None,
            "cost": costs,
            "quality": metrics,
            "train_fingerprint": train_fingerprint(train),
            "entries": rows,
        }
        write_json_atomic(folder / "summary.json", summary)

    def _assess(self, folder: Path, synth: torch.Tensor, rows, native: torch.Tensor, train, ids):
        from medaug.pipelines.oversample.quality import assess_synthetic

        q = self.quality
        report = assess_synthetic(
            native,
            [e["label"] for e in train],
            ids,
            synth,
            [r["label"] for r in rows],
            [r["id"] for r in rows],
            self.class_names,
            feature_network=q["feature_network_path"],
            near_copy_threshold=q["near_copy_threshold"],
            seed=self.seed,
            feature_epochs=int(q["feature_epochs"]),
            device=self.device,
            progress=self.progress,
            feature_cache_dir=self.cache_dir / "feature_networks",  # one per train set, shared by all methods
        )
        report.save(folder / "quality")
        return dict(report.metrics), set(report.near_copy_ids)

    # -- reporting -----------------------------------------------------------------------------
    def _log(self, result: OversampleResult) -> None:
        summary = result.summary
        if self.run_dir is not None:
            write_json_atomic(
                self.run_dir / "oversample.json",
                {**summary, "cache_key": result.cache_key, "cache_hit": result.cache_hit},
            )
        added = summary.get("added", {})
        logger.info(
            "oversample %s: %d synthetic train image(s) %s%s",
            self.method,
            len(result.synthetic),
            added,
            " (from cache)" if result.cache_hit else "",
        )
        if self.tracker is None or self.tracker.run_id is None:
            return
        metrics = {"oversample_synthetic_total": len(result.synthetic), "oversample_cache_hit": int(result.cache_hit)}
        metrics.update({f"oversample_synthetic_{name}": n for name, n in added.items()})
        for part, cost in summary.get("cost", {}).items():
            metrics[f"oversample_{part}_seconds"] = cost["seconds"]
            metrics[f"oversample_{part}_peak_memory_mb"] = cost["peak_memory_mb"]
        if "near_copies" in summary:
            metrics["oversample_near_copies"] = summary["near_copies"]
            metrics["oversample_dropped_near_copies"] = summary["dropped_near_copies"]
        metrics.update(summary.get("quality") or {})
        self.tracker.log_metrics(metrics)
        self.tracker.set_tags(
            {
                "oversample_method": self.method,
                "oversample_cache_key": result.cache_key or "",
                "oversample_cache_hit": result.cache_hit,
            }
        )
        if result.manifest_path is not None:
            folder = result.manifest_path.parent
            for path in (folder / "manifest.csv", folder / "summary.json"):
                self.tracker.log_artifact(path, "oversample")
            if (folder / "quality").is_dir():
                for path in sorted((folder / "quality").iterdir()):
                    self.tracker.log_artifact(path, "oversample/quality")
