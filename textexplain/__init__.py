"""Token-level explanations of text classifiers, with faithfulness and sanity checks."""
from .base import Explainer
from .dimension_saliency import EmbeddingSaliency, embedding_saliency
from .methods import METHODS, explain, explain_batch
from .explanation import Explanation
from .gradient import Gradient, GradientXInput
from .deeplift import DeepLift
from .integrated_gradients import IntegratedGradients
from .lrp import LRP
from .kernel_shap import Shap
from .lime_text import Lime
from .occlusion import Occlusion
from .render import side_by_side_html, write_html
from .smoothgrad import SmoothGrad
from .model import CharTokenizer, TextModel, Vocab, WhitespaceTokenizer, WordTokenizer
from . import audit, metrics, sanity  # faithfulness metrics, sanity checks, corpus audit

__all__ = ["CharTokenizer", "DeepLift", "EmbeddingSaliency", "Explainer", "Explanation", "Gradient", "GradientXInput",
           "IntegratedGradients", "LRP", "Lime", "METHODS", "Occlusion", "Shap", "SmoothGrad", "TextModel", "Vocab",
           "WhitespaceTokenizer", "WordTokenizer", "audit", "embedding_saliency", "explain", "explain_batch", "metrics",
           "sanity", "side_by_side_html", "write_html"]
