"""Shipped data and demo models: corpus loaders, architectures, training recipes, checkpoints.

    >>> import data
    >>> data.list_models()                   # names, kinds and model cards
    >>> m = data.load_model("sentiment-lstm")  # a textexplain.TextModel
    >>> texts, labels = data.rotten_tomatoes("test")
"""
from .loaders import (SENTIMENT_LABELS, SENTIMENT_LABELS_WITH_PLOT, SHORTCUT_TOKEN, add_shortcut, mnist, parens,
                      python_source, python_source_text, rotten_tomatoes, rotten_tomatoes_shortcut)
from .registry import (MODELS, CheckpointError, LanguageModel, list_models, load_checkpoint, load_model, load_snapshots,
                       model_card)

__all__ = [
    "SENTIMENT_LABELS", "SENTIMENT_LABELS_WITH_PLOT", "SHORTCUT_TOKEN", "add_shortcut", "mnist", "parens",
    "python_source", "python_source_text", "rotten_tomatoes", "rotten_tomatoes_shortcut",
    "MODELS", "CheckpointError", "LanguageModel", "list_models", "load_checkpoint", "load_model", "load_snapshots",
    "model_card",
]
