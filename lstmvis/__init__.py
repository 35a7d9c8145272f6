"""Capture, store, select-and-match and interpret the hidden states of recurrent and conv text models."""
from textexplain.language_model import LanguageModel

from .capture import Recorder
from .extraction import extract
from .store import StateStore, StoreError
from .project import export_lstmvis, import_lstmvis
from . import hypotheses
from .cells import CellRanking, explain_cell, explain_stored_cell, gate_saturation, rank_cells, top_contexts
from .index import MatchIndex, build_index
from .query import MatchQuery, MatchResult, match, select
from .serving import serve
from .textcnn import receptive_fields, top_ngrams

__all__ = ["CellRanking", "LanguageModel", "MatchIndex", "MatchQuery", "MatchResult", "Recorder", "StateStore",
           "StoreError", "build_index", "explain_cell", "explain_stored_cell", "export_lstmvis", "extract",
           "gate_saturation", "hypotheses", "import_lstmvis", "match", "rank_cells", "receptive_fields", "select",
           "serve", "top_contexts", "top_ngrams"]
