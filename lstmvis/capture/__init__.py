"""Recorder: exact per-step hidden states, cell states and gates of PyTorch recurrent modules.

A fused ``nn.LSTM`` only returns the last layer's h_t and the final (h_n, c_n). While a
``Recorder`` is active, every recorded ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` runs layer by layer
through the same fused kernel (``num_layers=1`` per call, which gives bitwise the same outputs as
the multi-layer call), so h_t of every layer comes from the kernel itself. From each layer's
input x_t and h_{t-1} all gates of all steps follow from one matmul per weight matrix
(``gates = x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``); the LSTM cell state is the cheap
elementwise recurrence ``c_t = f_t * c_{t-1} + i_t * g_t``. The module returns exactly what it
would have returned (same kernel; in training mode the inter-layer dropout is ``F.dropout`` with
the module's rate, so its random mask differs from an unrecorded call, as any two calls differ).

A float32 ``nn.LSTM`` on CPU (no projection, not packed) skips the matmul: torch runs it through
oneDNN, whose training-mode pass keeps every step's activated gates in a workspace for the
backward; the recorder runs that pass and reads the gates there (about 1.1-1.2x the plain forward
instead of 2.5x for h, c and all gates). Its outputs are bitwise what the module returns with
autograd on; the module's no_grad (inference) pass rounds differently, by up to ~1e-6 in h after a few hundred steps of a trained LSTM (docs/capture-and-store.md).
Under autograd these layer calls are the module's own on the graph (outputs and gradients
unchanged). The workspace is large, so the first one in a process raises glibc's malloc
thresholds to keep it for reuse (``lstmvis.allocator.keep_heap_for``; ``LSTMVIS_TUNE_ALLOCATOR=0``
opts out).

``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` called in a user loop are recorded per call
(one time step each) and ``nn.Conv1d`` outputs are recorded as they are.

Source names (one per recorded tensor):

* ``{module}.l{layer}.{kind}`` for recurrent modules and cells (cells are layer 0), with
  ``reverse.`` before the kind for the backward direction: ``rnn.l0.h``, ``rnn.l1.reverse.c``.
  Kinds: ``h`` (the layer output h_t, projected when ``proj_size > 0``), ``c`` (LSTM cell state),
  ``gate_i``, ``gate_f``, ``gate_g``, ``gate_o`` (LSTM, after sigmoid/tanh), ``gate_r``,
  ``gate_z``, ``gate_n`` (GRU, after sigmoid/tanh; ``n`` is the candidate state).
* ``{module}.conv`` for ``nn.Conv1d``: the pre-activation output, as ``(B, T_out, C)``.
* ``{module}`` for any other module chosen in ``modules=`` (a transformer block, an MLP activation, an
  ``nn.Linear``): its per-token output as ``(B, T, D)``, by the rule in ``outputs``.

``{module}`` is the qualified name inside the recorded model (``named_modules``), or the class
name in lower case when the recorded model is itself the RNN (``lstm.l0.h``).

Every recorded tensor is batch-first ``(B, T, D)`` in the caller's batch order, whatever the
module's ``batch_first`` and whether the input was packed; steps beyond a sequence's length are
zero and ``Recorder.lengths`` gives the valid lengths. The reverse direction runs over each
sequence's valid steps only, as the fused kernel does on packed input.

Thread safety: a Recorder records only forward passes made by the thread that entered it; other
threads calling the same model meanwhile run it unchanged and unrecorded.

Modules: ``recorder`` (the Recorder), ``base`` (kinds, source names, ``Deferred``), and one per
route: ``fused`` (recurrent modules layer by layer: the dispatcher), ``gates`` (gates and c by
matmul after the fused kernel), ``workspace`` (gates from oneDNN's workspace), ``unroll`` (the own
unroll), ``cell_calls`` (cells in user loops), ``conv`` (``nn.Conv1d``), ``outputs`` (any other chosen
module's output).
"""
from .base import (CELL_TYPES, GRU_GATES, KIND_ALIASES, KINDS, LSTM_GATES, RNN_TYPES, ROUTES, Deferred,
                   parse_kinds, source_name)
from .recorder import Recorder

__all__ = ["CELL_TYPES", "GRU_GATES", "KIND_ALIASES", "KINDS", "LSTM_GATES", "RNN_TYPES", "ROUTES",
           "Deferred", "Recorder", "parse_kinds", "source_name"]
