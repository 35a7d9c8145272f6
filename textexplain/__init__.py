"""Token-level explanations of text classifiers, with faithfulness and sanity checks."""
from .explanation import Explanation
from .model import CharTokenizer, TextModel, Vocab, WhitespaceTokenizer, WordTokenizer

__all__ = ["CharTokenizer", "Explanation", "TextModel", "Vocab", "WhitespaceTokenizer", "WordTokenizer"]
