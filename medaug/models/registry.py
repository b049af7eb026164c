"""The generators of the oversampling stage, by the ``oversample#method`` that uses them.

Each entry says which :class:`~medaug.models.generator_base.ImageGenerator` class makes the images,
which subsection of the bundle's ``oversample`` section holds its settings (the keyword arguments
of the class), and which of its methods draws the images. Methods that name the same section share
one fitted generator (one fit, one cache entry): ``vae`` and ``vae_interp`` sample the same VAEs,
``ldm`` and ``ldm_img2img`` the same latent diffusion model. Which settings of a section change
only the sampling, not the fitted model, the generator class says itself
(:attr:`ImageGenerator.sampling_only`): they are left out of the fit's cache key.

Adding a generator: write its class in one file of :mod:`medaug.models` (subclass ``ImageGenerator``),
add one line to :data:`GENERATORS` below, and give the bundle's ``oversample`` section a subsection
of the same name as ``section`` (``oversample#<section>``); ``oversample#method <name>`` then runs
it, alone or as ``hybrid#generator``. The stage (:mod:`medaug.pipelines.oversample.stage`) needs no edit.
"""

from __future__ import annotations

from dataclasses import dataclass

from medaug.models.cgan import ConditionalGAN
from medaug.models.class_vae import ClassVAEInterpolation
from medaug.models.generator_base import ImageGenerator
from medaug.models.latent_diffusion import ClassConditionalLDM

__all__ = ["GENERATORS", "GeneratorSpec", "generator_sections", "generator_spec"]


@dataclass(frozen=True)
class GeneratorSpec:
    """How one ``oversample#method`` makes its images.

    Args:
        generator: the class, built as ``generator(channels, num_classes, image_size, seed=, device=,
            progress=, **settings)`` with ``settings`` the bundle's ``oversample#<section>``.
        section: the subsection of ``oversample`` with the class's settings; also the fitted model's
            name in the fit cache key, so methods with the same section share one fitted generator.
        draw: the generator's method that makes the images, called as
            ``draw(label, n, real_images, real_ids, seed=)`` and returning a ``SampleBatch``.
    """

    generator: type[ImageGenerator]
    section: str
    draw: str = "sample"

    def __post_init__(self) -> None:
        if not (isinstance(self.generator, type) and issubclass(self.generator, ImageGenerator)):
            raise TypeError(f"generator must be an ImageGenerator subclass, got {self.generator!r}")
        if not callable(getattr(self.generator, self.draw, None)):
            raise TypeError(f"{self.generator.__name__} has no method {self.draw!r} to draw images with")

    @property
    def sampling_only(self) -> frozenset[str]:
        """Settings of the section that change how the fitted model is sampled, not the model."""
        return frozenset(self.generator.sampling_only)


# oversample#method -> generator; the order is the one METHODS lists them in.
GENERATORS: dict[str, GeneratorSpec] = {
    "gan": GeneratorSpec(ConditionalGAN, section="gan"),
    "vae": GeneratorSpec(ClassVAEInterpolation, section="vae_interp", draw="sample_prior"),
    "vae_interp": GeneratorSpec(ClassVAEInterpolation, section="vae_interp"),
    "ldm": GeneratorSpec(ClassConditionalLDM, section="ldm"),
    "ldm_img2img": GeneratorSpec(ClassConditionalLDM, section="ldm", draw="sample_img2img"),
}


def generator_spec(method: str) -> GeneratorSpec:
    """The registry entry of a generative ``oversample#method``; a clear error for any other name."""
    try:
        return GENERATORS[method]
    except KeyError:
        raise ValueError(f"generator {method!r} is not one of {tuple(GENERATORS)}") from None


def generator_sections() -> tuple[str, ...]:
    """The ``oversample`` subsections that hold generator settings, in registry order, each once."""
    return tuple(dict.fromkeys(spec.section for spec in GENERATORS.values()))
