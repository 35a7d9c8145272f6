"""CNN image methods: attributions, CAMs, feature visualization, top patches, embeddings, sanity checks.

    >>> from textexplain import image
    >>> image.GradCAM(model, layer="features").attribute(x)          # (B, H, W)
    >>> image.METHODS["integrated_gradients"](model).attribute(x, target=3)
"""
from .base import METHODS, ImageMethod, attribute, register
from .cam import CAM, BaseCAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, HiResCAM
from .gradients import Gradient, GradientXInput, IntegratedGradients, Saliency, SmoothGrad
from .guided import Deconvnet, GuidedBackprop, RectifierRules
from .occlusion import Occlusion

__all__ = [
    "METHODS", "ImageMethod", "attribute", "register",
    "CAM", "BaseCAM", "GradCAM", "GradCAMPlusPlus", "GuidedGradCAM", "HiResCAM",
    "Gradient", "GradientXInput", "IntegratedGradients", "Saliency", "SmoothGrad",
    "Deconvnet", "GuidedBackprop", "RectifierRules", "Occlusion",
]
