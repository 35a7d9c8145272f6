"""Any submodule's per-token output (a transformer block, its MLP activation, a Linear) as ``(B, T, D)``.

The rule, for a module chosen with ``Recorder(modules=[...])`` that is not a recurrent module, a
cell or a ``Conv1d``:

* **Which tensor**: the output itself, the first element of a tuple or list, or the first value
  of a mapping (a Hugging Face ``ModelOutput``).
* **Layout**: a module that says so decides: its ``batch_first`` attribute, or that of its
  ``self_attn`` child (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``); ``False`` means
  ``(T, B, D)``, transposed to ``(B, T, D)``. Otherwise the output is ``(B, T, D)`` unless its first
  two dimensions are the model input's ``(T, B)`` and not its ``(B, T)``.
* **Not per token**: an output that is not 3-D with the input's batch size first (after the
  layout step), e.g. a pooled ``(B, D)`` or attention maps ``(B, H, T, T)``, is not recorded;
  ``Recorder.skipped`` names it with its shape.
* **Lengths** (padding): from the model call's ``attention_mask`` (keyword, or a second positional
  tensor of the ids' shape), else from the pad id (``Recorder(pad_id=...)``, else the model's own
  ``pad_id`` attribute): the position after each row's last real token (right padding). Without
  either, every step counts. Steps beyond a row's length are zero, as for recurrent sources.

The source is named after the module's qualified name (``encoder.layer.0.intermediate``).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from textexplain.hooks import transient


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        output = next(iter(output.values()), None)
    elif isinstance(output, (tuple, list)):
        output = output[0] if output else None
    return output if isinstance(output, torch.Tensor) else None


def _last_real(valid: torch.Tensor) -> torch.Tensor:
    """``(B,)``: the position after each row's last True (0 for a row without one)."""
    t = valid.shape[1]
    positions = torch.arange(1, t + 1, device=valid.device)
    return (valid.to(torch.long) * positions).amax(1).cpu()


def input_hook(rec):
    """The forward pre-hook on the recorded model: the call's ``(B, T)`` and lengths for the output hooks."""
    def hook(m, args, kwargs):
        if not rec.records_this_thread():
            return
        ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        if not isinstance(ids, torch.Tensor) or ids.dim() < 2:
            rec.call_input = None
            return
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].shape == ids.shape[:2]:
            mask = args[1]
        pad_id = rec.pad_id if rec.pad_id is not None else getattr(m, "pad_id", None)
        if isinstance(mask, torch.Tensor) and mask.shape == ids.shape[:2]:
            lengths = _last_real(mask != 0)
        elif isinstance(pad_id, int) and ids.dim() == 2 and not ids.is_floating_point():
            lengths = _last_real(ids != pad_id)
        else:
            lengths = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long)
        rec.call_input = (ids.shape[0], ids.shape[1], lengths)
    return transient(hook)


def _batch_first(m) -> bool | None:
    for owner in (m, getattr(m, "self_attn", None)):
        flag = getattr(owner, "batch_first", None)
        if isinstance(flag, bool):
            return flag
    return None


def output_hook(rec, name: str):
    """The forward hook that records module ``name``'s per-token output for ``rec``."""
    def hook(m, args, output):
        if not rec.records_this_thread():
            return
        out = _first_tensor(output)
        if out is None or out.dim() != 3:
            rec.skip(name, "its output is not a tensor" if out is None else f"its output has shape {tuple(out.shape)}")
            return
        call = rec.call_input
        flag = _batch_first(m)
        if flag is False or (flag is None and call is not None and out.shape[:2] == (call[1], call[0])
                             and out.shape[:2] != (call[0], call[1])):
            out = out.transpose(0, 1)
        if call is not None and out.shape[0] != call[0]:
            rec.skip(name, f"its output {tuple(out.shape)} has no batch dimension of {call[0]}")
            return
        if call is not None and out.shape[1] == call[1]:
            lengths = call[2]
            valid = torch.arange(out.shape[1])[None, :] < lengths[:, None]
            if not bool(valid.all()):
                out = out.masked_fill(~valid.to(out.device)[:, :, None], 0)
        else:  # another time axis (pooled, strided): every step counts
            lengths = torch.full((out.shape[0],), out.shape[1], dtype=torch.long)
        rec.emit(name, out, lengths)
    return transient(hook)
