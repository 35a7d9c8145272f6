"""Capture, store, select-and-match and interpret the hidden states of recurrent and conv text models."""
from .capture import Recorder
from .extraction import extract
from .store import StateStore, StoreError
from .project import export_lstmvis, import_lstmvis
from . import hypotheses
from .cells import CellRanking, explain_cell, explain_stored_cell, gate_saturation, rank_cells, top_contexts
from .match import MatchIndex, MatchResult, build_index, match, select
from .textcnn import receptive_fields, top_ngrams
