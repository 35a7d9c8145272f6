"""Capture, store, select-and-match and interpret the hidden states of recurrent and conv text models."""
from .capture import Recorder
from .extract import extract
from .store import StateStore, StoreError
