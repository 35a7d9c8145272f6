"""Token-level explanations of text classifiers, with faithfulness and sanity checks."""
from .model import CharTokenizer, TextModel, Vocab, WhitespaceTokenizer, WordTokenizer

__all__ = ["CharTokenizer", "TextModel", "Vocab", "WhitespaceTokenizer", "WordTokenizer"]
