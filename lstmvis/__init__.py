"""Capture, store, select-and-match and interpret the hidden states of recurrent and conv text models."""
from .capture import Recorder
from .extract import extract
from .store import StateStore, StoreError
from . import hypotheses
from .cells import CellRanking, explain_cell, explain_stored_cell, gate_saturation, rank_cells, top_contexts
from .index import MatchIndex, build_index
from .query import MatchQuery, MatchResult, match, select
from .textcnn import receptive_fields, top_ngrams
