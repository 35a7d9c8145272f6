"""CNN image methods: attributions, CAMs, feature visualization, top patches, embeddings, sanity checks.

    >>> from textexplain import image
    >>> image.GradCAM(model, layer="features").attribute(x)          # (B, H, W)
    >>> image.METHODS["integrated_gradients"](model).attribute(x, target=3)
    >>> image.ModelRandomization(model, ["gradient", "gradcam"]).run(x).to_markdown()

Every attribution class takes the model and hyperparameters in its constructor and explains a
batch (B, C, H, W) with ``attribute(x, target=None)``; ``METHODS`` maps names to classes.
"""
from .base import METHODS, Configurable, ImageMethod, attribute, register
from .deconvnet import UnitReconstructions, reconstruct, top_reconstructions
from .cam import CAM, BaseCAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, HiResCAM
from .embedding import FeatureEmbedding, penultimate_features
from .gradients import Gradient, GradientXInput, IntegratedGradients, Saliency, SmoothGrad
from .guided import Deconvnet, GuidedBackprop, RectifierRules
from .occlusion import Occlusion
from .deeplift import DeepLift
from .lrp import LRP
from .patches import ReceptiveField, TopPatches, receptive_field
from .render import attribution_figure, images_figure, images_grid_png, overlay_png, save_png
from .sanity import DataRandomization, ModelRandomization, SanityResult, randomizable_layers
from .visualize import ActivationMaximization, DeepDream, feature_maps, filter_images


def describe_methods() -> list[dict]:
    """Every registered attribution method with its defaults, output kind and signedness (for a UI)."""
    return [cls.describe() for cls in METHODS.values()]


__all__ = [
    "METHODS", "Configurable", "ImageMethod", "attribute", "register", "describe_methods",
    "CAM", "BaseCAM", "GradCAM", "GradCAMPlusPlus", "GuidedGradCAM", "HiResCAM",
    "FeatureEmbedding", "penultimate_features",
    "Gradient", "GradientXInput", "IntegratedGradients", "Saliency", "SmoothGrad",
    "DeepLift", "LRP", "Deconvnet", "GuidedBackprop", "RectifierRules", "Occlusion",
    "UnitReconstructions", "reconstruct", "top_reconstructions",
    "ReceptiveField", "TopPatches", "receptive_field",
    "attribution_figure", "images_figure", "images_grid_png", "overlay_png", "save_png",
    "DataRandomization", "ModelRandomization", "SanityResult", "randomizable_layers",
    "ActivationMaximization", "DeepDream", "feature_maps", "filter_images",
]
