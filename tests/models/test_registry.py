"""The generator registry: every generative ``oversample#method`` names its class, the section of the
default bundle's ``oversample`` that holds the class's settings, and the call that draws images;
methods that share a section share one fitted generator. Unknown names are listed in the error."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from medaug.models import GENERATORS, GeneratorSpec, generator_sections, generator_spec
from medaug.models.cgan import ConditionalGAN
from medaug.models.class_vae import ClassVAEInterpolation
from medaug.models.latent_diffusion import ClassConditionalLDM

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OVERSAMPLE = json.loads((REPO / "bundles/imbalance_baselines/configs/train.json").read_text())["oversample"]
# oversample#method values that are generators (none, random and hybrid are the stage's own).
GENERATIVE_METHODS = ("gan", "vae", "vae_interp", "ldm", "ldm_img2img")


def test_every_generative_method_is_registered_with_a_section_of_the_default_bundle():
    assert tuple(GENERATORS) == GENERATIVE_METHODS
    for method in GENERATIVE_METHODS:
        spec = generator_spec(method)
        settings = DEFAULT_OVERSAMPLE[spec.section]
        accepted = inspect.signature(spec.generator).parameters
        assert set(settings) <= set(accepted), f"oversample#{spec.section} has keys {spec.generator.__name__} lacks"
        assert spec.sampling_only <= set(accepted)
        assert callable(getattr(spec.generator, spec.draw))
    assert generator_sections() == ("gan", "vae_interp", "ldm")


def test_methods_with_one_section_share_one_fitted_generator_and_differ_in_how_they_draw():
    assert (generator_spec("gan").generator, generator_spec("gan").draw) == (ConditionalGAN, "sample")
    vae, interp = generator_spec("vae"), generator_spec("vae_interp")
    assert vae.generator is interp.generator is ClassVAEInterpolation and vae.section == interp.section
    assert (vae.draw, interp.draw) == ("sample_prior", "sample")
    ldm, img2img = generator_spec("ldm"), generator_spec("ldm_img2img")
    assert ldm.generator is img2img.generator is ClassConditionalLDM and ldm.section == img2img.section
    assert (ldm.draw, img2img.draw) == ("sample", "sample_img2img")


def test_sampling_only_settings_are_the_ones_that_leave_the_fitted_model_alone():
    assert generator_spec("gan").sampling_only == frozenset()
    assert generator_spec("vae_interp").sampling_only == {"alpha_range"}
    assert generator_spec("ldm_img2img").sampling_only == {"ddim_steps", "img2img_strength"}


def test_an_unknown_generator_is_an_error_that_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"generator 'diffusion' is not one of \('gan', 'vae', 'vae_interp'"):
        generator_spec("diffusion")


def test_a_spec_must_name_a_generator_class_and_a_method_it_has():
    with pytest.raises(TypeError, match="ImageGenerator subclass"):
        GeneratorSpec(dict, section="gan")
    with pytest.raises(TypeError, match="ConditionalGAN has no method 'sample_prior'"):
        GeneratorSpec(ConditionalGAN, section="gan", draw="sample_prior")
