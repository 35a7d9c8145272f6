"""Recorder: captured h/c/gates equal the module's own outputs and a slow step-by-step reference."""
import itertools
import threading

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmvis.capture import Recorder, parse_kinds

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module


def reference_unroll(m, x, lengths, h0=None, c0=None, name="rnn"):
    """Every source of ``m`` by an explicit per-sequence, per-step loop over its weights.

    ``x``: (B, T, in) batch-first, ``lengths``: (B,), ``h0``/``c0``: (L*D, B, .) or None.
    Independent of the Recorder's vectorised route; padding steps are zero.
    """
    mode = type(m).__name__ if not isinstance(m, nn.RNN) else m.nonlinearity
    n_dirs = 2 if m.bidirectional else 1
    size = m.proj_size if getattr(m, "proj_size", 0) else m.hidden_size
    B, T, _ = x.shape
    out = {}
    layer_in = x
    for layer in range(m.num_layers):
        next_in = torch.zeros(B, T, n_dirs * size)
        for d in range(n_dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx)
            b_ih = getattr(m, "bias_ih" + sfx) if m.bias else torch.zeros(w_ih.shape[0])
            b_hh = getattr(m, "bias_hh" + sfx) if m.bias else torch.zeros(w_hh.shape[0])
            w_hr = getattr(m, "weight_hr" + sfx, None)
            rec = {}
            for b in range(B):
                n = int(lengths[b])
                h = h0[layer * n_dirs + d, b] if h0 is not None else torch.zeros(size)
                c = c0[layer * n_dirs + d, b] if c0 is not None else torch.zeros(m.hidden_size)
                steps = range(n) if d == 0 else range(n - 1, -1, -1)
                for t in steps:
                    xt = layer_in[b, t]
                    vals = {}
                    if mode == "LSTM":
                        pre = w_ih @ xt + b_ih + w_hh @ h + b_hh
                        i, f, g, o = pre.chunk(4)
                        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                        c = f * c + i * g
                        h = o * torch.tanh(c)
                        if w_hr is not None:
                            h = w_hr @ h
                        vals = {"c": c, "gate_i": i, "gate_f": f, "gate_g": g, "gate_o": o}
                    elif mode == "GRU":
                        gi, gh = w_ih @ xt + b_ih, w_hh @ h + b_hh
                        r = torch.sigmoid(gi[:m.hidden_size] + gh[:m.hidden_size])
                        z = torch.sigmoid(gi[m.hidden_size:2 * m.hidden_size] + gh[m.hidden_size:2 * m.hidden_size])
                        nn_ = torch.tanh(gi[2 * m.hidden_size:] + r * gh[2 * m.hidden_size:])
                        h = (1 - z) * nn_ + z * h
                        vals = {"gate_r": r, "gate_z": z, "gate_n": nn_}
                    else:
                        pre = w_ih @ xt + b_ih + w_hh @ h + b_hh
                        h = torch.tanh(pre) if mode == "tanh" else torch.relu(pre)
                    vals["h"] = h
                    for kind, v in vals.items():
                        rec.setdefault(kind, torch.zeros(B, T, v.shape[0]))[b, t] = v
                    next_in[b, t, d * size:(d + 1) * size] = h
            for kind, v in rec.items():
                out[f"{name}.l{layer}.{'reverse.' if d else ''}{kind}"] = v
        layer_in = next_in
    return out


def _module(kind, layers, bidirectional, batch_first, proj, bias=True):
    torch.manual_seed(1)
    if kind == "lstm":
        return nn.LSTM(4, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                       proj_size=proj, bias=bias).eval()
    if kind == "gru":
        return nn.GRU(4, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias).eval()
    return nn.RNN(4, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                  nonlinearity=kind, bias=bias).eval()


def _check_against(ref, rec):
    assert set(rec.states) == set(ref), (sorted(rec.states), sorted(ref))
    for name, want in ref.items():
        torch.testing.assert_close(rec.states[name], want, atol=ATOL, rtol=0, msg=name)


COMBOS = [(k, L, bi, bf, proj)
          for k, L, bi, bf, proj in itertools.product(["lstm", "gru", "tanh", "relu"], [1, 2], [False, True],
                                                      [False, True], [0, 3])
          if proj == 0 or k == "lstm"]


@pytest.mark.parametrize("kind,layers,bidirectional,batch_first,proj", COMBOS)
@pytest.mark.parametrize("given_state", [False, True])
def test_dense_input_exact(kind, layers, bidirectional, batch_first, proj, given_state):
    m = _module(kind, layers, bidirectional, batch_first, proj)
    B, T = 3, 6
    x = torch.randn(B, T, 4)
    n_dirs = 2 if bidirectional else 1
    size = proj or 5
    hx = None
    h0 = c0 = None
    if given_state:
        h0 = torch.randn(layers * n_dirs, B, size)
        c0 = torch.randn(layers * n_dirs, B, 5)
        hx = (h0, c0) if kind == "lstm" else h0
    inp = x if batch_first else x.transpose(0, 1)
    with torch.no_grad():
        plain_out, plain_hidden = m(inp, hx)
        with Recorder(m, kinds="all") as rec:
            out, hidden = m(inp, hx)
    if kind == "lstm" and proj == 0:
        # the gates come from oneDNN's training-mode pass: what the module returns with autograd on,
        # bitwise; its no_grad (inference) pass rounds differently in the last bits
        with torch.enable_grad():
            plain_out, plain_hidden = (t.detach() if torch.is_tensor(t) else tuple(u.detach() for u in t)
                                       for t in m(inp, hx))
    # recording never changes what the module returns
    assert torch.equal(out, plain_out)
    for a, b in zip(hidden if kind == "lstm" else [hidden], plain_hidden if kind == "lstm" else [plain_hidden]):
        assert torch.equal(a, b)
    name = type(m).__name__.lower()
    out_bf = out if batch_first else out.transpose(0, 1)
    last = layers - 1
    h_n = hidden[0] if kind == "lstm" else hidden
    torch.testing.assert_close(rec.states[f"{name}.l{last}.h"], out_bf[..., :size], atol=ATOL, rtol=0)
    for layer in range(layers):
        torch.testing.assert_close(rec.states[f"{name}.l{layer}.h"][:, -1], h_n[layer * n_dirs], atol=ATOL, rtol=0)
        if kind == "lstm":
            torch.testing.assert_close(rec.states[f"{name}.l{layer}.c"][:, -1], hidden[1][layer * n_dirs],
                                       atol=ATOL, rtol=0)
        if bidirectional:
            torch.testing.assert_close(rec.states[f"{name}.l{layer}.reverse.h"][:, 0], h_n[layer * n_dirs + 1],
                                       atol=ATOL, rtol=0)
            if kind == "lstm":
                torch.testing.assert_close(rec.states[f"{name}.l{layer}.reverse.c"][:, 0],
                                           hidden[1][layer * n_dirs + 1], atol=ATOL, rtol=0)
    if bidirectional:
        torch.testing.assert_close(rec.states[f"{name}.l{last}.reverse.h"], out_bf[..., size:], atol=ATOL, rtol=0)
    ref = reference_unroll(m, x, torch.full((B,), T), h0, c0 if kind == "lstm" else None, name=name)
    _check_against(ref, rec)
    assert all(v.shape[:2] == (B, T) for v in rec.states.values())
    assert "forward" not in m.__dict__


@pytest.mark.parametrize("kind,bidirectional,proj", [("lstm", True, 0), ("lstm", True, 2), ("lstm", False, 0),
                                                     ("gru", True, 0), ("tanh", True, 0)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequences_exact(kind, bidirectional, proj, batch_first):
    m = _module(kind, 2, bidirectional, batch_first, proj)
    B, T = 4, 7
    lengths = torch.tensor([3, 7, 1, 5])
    x = torch.randn(B, T, 4)
    x[torch.arange(T)[None, :] >= lengths[:, None]] = 0.0
    n_dirs = 2 if bidirectional else 1
    h0 = torch.randn(2 * n_dirs, B, proj or 5)
    c0 = torch.randn(2 * n_dirs, B, 5)
    hx = (h0, c0) if kind == "lstm" else h0
    inp = x if batch_first else x.transpose(0, 1)
    packed = pack_padded_sequence(inp, lengths, batch_first=batch_first, enforce_sorted=False)
    with torch.no_grad():
        plain_out, plain_hidden = m(packed, hx)
        with Recorder(m, kinds="all") as rec:
            out, hidden = m(packed, hx)
    assert torch.equal(out.data, plain_out.data) and torch.equal(out.sorted_indices, plain_out.sorted_indices)
    padded, _ = pad_packed_sequence(out, batch_first=True)
    name = type(m).__name__.lower()
    size = proj or 5
    torch.testing.assert_close(rec.states[f"{name}.l1.h"], padded[..., :size], atol=ATOL, rtol=0)
    h_n = hidden[0] if kind == "lstm" else hidden
    for b in range(B):
        n = int(lengths[b])
        torch.testing.assert_close(rec.states[f"{name}.l1.h"][b, n - 1], h_n[n_dirs, b], atol=ATOL, rtol=0)
        if kind == "lstm":
            torch.testing.assert_close(rec.states[f"{name}.l1.c"][b, n - 1], hidden[1][n_dirs, b], atol=ATOL, rtol=0)
        if bidirectional:
            torch.testing.assert_close(rec.states[f"{name}.l1.reverse.h"][b, 0], h_n[2 * n_dirs - 1, b],
                                       atol=ATOL, rtol=0)
    assert torch.equal(rec.lengths[f"{name}.l0.h"], lengths)
    ref = reference_unroll(m, x, lengths, h0, c0 if kind == "lstm" else None, name=name)
    _check_against(ref, rec)


def test_unbatched_input_and_no_bias():
    m = _module("lstm", 2, True, False, 0, bias=False)
    x = torch.randn(6, 4)
    with torch.no_grad():
        with Recorder(m) as rec:
            out = m(x)
    plain = m(x)  # autograd on: the kernel pass the recorded LSTM runs
    assert torch.equal(out[0], plain[0].detach()) and out[0].shape == (6, 10)
    assert out[1][0].shape == (4, 5)
    ref = reference_unroll(m, x[None], torch.tensor([6]), name="lstm")
    _check_against(ref, rec)


def test_selection_of_kinds_layers_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.LSTM(3, 4, num_layers=2)
            self.b = nn.GRU(4, 2)
            self.conv = nn.Conv1d(3, 6, 3, padding=1)

        def forward(self, x):
            self.conv(x.permute(1, 2, 0))
            return self.b(self.a(x)[0])[0]

    net = Net().eval()
    x = torch.randn(5, 2, 3)
    with Recorder(net, kinds="h,gate_f,conv", layers=[1]) as rec:
        net(x)
    assert sorted(rec.states) == ["a.l1.gate_f", "a.l1.h", "conv.conv"]
    assert rec.states["conv.conv"].shape == (2, 5, 6)
    with Recorder(net, kinds=["c"], modules=["a"]) as rec:
        net(x)
    assert sorted(rec.states) == ["a.l0.c", "a.l1.c"]
    with Recorder(net, kinds="gates", modules=[nn.GRU]) as rec:
        net(x)
    assert sorted(rec.states) == ["b.l0.gate_n", "b.l0.gate_r", "b.l0.gate_z"]
    assert rec.sources_expected == ["b.l0.gate_r", "b.l0.gate_z", "b.l0.gate_n"]
    with pytest.raises(ValueError, match="recordable"):
        Recorder(net, modules=["nope"])
    with pytest.raises(ValueError, match="unknown kind"):
        Recorder(net, kinds="h,bogus")
    with pytest.raises(ValueError, match="no nn.LSTM"):
        Recorder(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Module"):
        Recorder("model")
    assert parse_kinds("gates") == parse_kinds(["gate_i", "gate_f", "gate_g", "gate_o", "gate_r", "gate_z", "gate_n"])


def test_conv1d_pre_activation():
    torch.manual_seed(0)
    conv = nn.Conv1d(3, 4, 3, padding=1)
    net = nn.Sequential(conv, nn.ReLU())
    x = torch.randn(2, 3, 7)
    with Recorder(net) as rec:
        y = net(x)
    torch.testing.assert_close(rec.states["0.conv"], conv(x).transpose(1, 2))
    assert (rec.states["0.conv"] < 0).any() and torch.equal(torch.relu(rec.states["0.conv"]), y.transpose(1, 2))


@pytest.mark.parametrize("cell_type", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_cells_in_a_user_loop_equal_the_fused_module(cell_type):
    torch.manual_seed(2)
    fused_type = {nn.LSTMCell: nn.LSTM, nn.GRUCell: nn.GRU, nn.RNNCell: nn.RNN}[cell_type]
    fused = fused_type(4, 5, batch_first=True).eval()
    cell = cell_type(4, 5)
    for suffix in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(cell, suffix).data.copy_(getattr(fused, suffix + "_l0"))

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x):
            state = None
            for t in range(x.shape[1]):
                state = self.cell(x[:, t], state)
            return state

    loop = Loop()
    x = torch.randn(2, 6, 4)
    with torch.no_grad():
        with Recorder(loop, kinds="all") as rec_loop:
            loop(x)
        with Recorder(fused, kinds="all") as rec_fused:
            fused(x)
    assert len(rec_loop.calls("cell.l0.h")) == 6
    assert sorted(rec_loop.states) == sorted(s.replace(fused_type.__name__.lower(), "cell")
                                             for s in rec_fused.states)
    for name, v in rec_fused.states.items():
        torch.testing.assert_close(rec_loop.states[name.replace(fused_type.__name__.lower(), "cell")], v,
                                   atol=ATOL, rtol=0)


def test_lstmcell_with_keyword_state_and_unbatched():
    torch.manual_seed(3)
    cell = nn.LSTMCell(3, 2)
    x, h, c = torch.randn(3), torch.randn(2), torch.randn(2)
    with Recorder(cell) as rec:
        h1, c1 = cell(x, hx=(h, c))
    assert torch.equal(rec.states["lstmcell.l0.h"][0, 0], h1)
    pre = cell.weight_ih @ x + cell.bias_ih + cell.weight_hh @ h + cell.bias_hh
    torch.testing.assert_close(rec.states["lstmcell.l0.gate_f"][0, 0], torch.sigmoid(pre[2:4]))


def test_training_mode_dropout_states_match_returned_output():
    torch.manual_seed(0)
    m = nn.LSTM(4, 5, num_layers=3, dropout=0.5, batch_first=True).train()
    x = torch.randn(2, 6, 4)
    with Recorder(m) as rec:
        out, (h_n, c_n) = m(x)
    torch.testing.assert_close(rec.states["lstm.l2.h"], out, atol=0, rtol=0)
    for layer in range(3):
        torch.testing.assert_close(rec.states[f"lstm.l{layer}.c"][:, -1], c_n[layer], atol=ATOL, rtol=0)


def test_gradients_flow_when_not_detached():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4)
    m = nn.LSTM(4, 5, num_layers=2, batch_first=True)
    ids = torch.tensor([[1, 2, 3, 4]])
    with Recorder(m, detach=False) as rec:
        m(emb(ids))
    rec.states["lstm.l0.c"][0, 2, 1].backward()
    grad = emb.weight.grad
    assert grad[[1, 2, 3]].abs().sum() > 0 and grad[4].abs().sum() == 0  # causal: step 3 does not matter


def test_hooks_removed_after_exception_and_nothing_recorded_outside():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(2, 3)
            self.conv = nn.Conv1d(2, 2, 1)

        def forward(self, x):
            self.conv(x.permute(1, 2, 0))
            self.rnn(x)
            raise RuntimeError("boom")

    net = Boom()
    rec = Recorder(net)
    with pytest.raises(RuntimeError, match="boom"):
        with rec:
            net(torch.randn(3, 1, 2))
    assert "forward" not in net.rnn.__dict__
    assert not net.conv._forward_hooks
    assert not rec.recording
    n_before = {k: len(v) for k, v in rec._calls.items()}
    net.rnn(torch.randn(3, 1, 2))
    assert {k: len(v) for k, v in rec._calls.items()} == n_before


def test_other_threads_are_not_recorded():
    torch.manual_seed(0)
    m = nn.LSTM(3, 4, batch_first=True)
    conv_net = nn.Conv1d(3, 3, 1)
    started, release = threading.Event(), threading.Event()
    other_outputs = []

    def other():
        started.wait()
        with torch.no_grad():
            other_outputs.append(m(torch.randn(7, 2, 3))[0])
            conv_net(torch.randn(7, 3, 2))
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    x = torch.randn(1, 5, 3)
    with Recorder(m) as rec, Recorder(conv_net) as rec_conv:
        started.set()
        release.wait(10)
        m(x)
        conv_net(torch.randn(1, 3, 4))
    thread.join()
    assert rec.states["lstm.l0.h"].shape == (1, 5, 4)
    assert len(rec.calls("lstm.l0.h")) == 1
    assert len(rec_conv.calls("conv1d.conv")) == 1
    assert other_outputs[0].shape == (7, 2, 4)


def test_concurrent_recorders_on_one_model():
    torch.manual_seed(0)
    m = nn.LSTM(3, 4, num_layers=2, batch_first=True)
    inputs = [torch.randn(i + 1, 5, 3) for i in range(4)]
    results, errors = {}, []
    barrier = threading.Barrier(4)

    def work(i):
        try:
            with Recorder(m, kinds="h,c") as rec:
                barrier.wait(10)
                for _ in range(5):
                    m(inputs[i])
            results[i] = rec
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, rec in results.items():
        assert all(v.shape[0] == i + 1 for v, _ in rec.calls("lstm.l1.h"))
        assert len(rec.calls("lstm.l1.h")) == 5
    assert "forward" not in m.__dict__


def test_one_recorder_cannot_be_entered_twice():
    m = nn.GRU(2, 2)
    rec = Recorder(m)
    with rec:
        with pytest.raises(RuntimeError, match="already recording"):
            rec.__enter__()


def test_chunked_calls_join_along_time():
    torch.manual_seed(0)
    m = nn.LSTM(3, 4, num_layers=2, batch_first=True)
    x = torch.randn(2, 9, 3)
    with Recorder(m) as whole:
        m(x)
    with Recorder(m) as chunked:
        state = None
        for s in range(0, 9, 4):
            _, state = m(x[:, s:s + 4], state)
    for name, v in whole.states.items():
        torch.testing.assert_close(chunked.states[name], v, atol=ATOL, rtol=0)
    assert chunked.lengths["lstm.l0.h"].tolist() == [9, 9]


def test_custom_forward_subclass_refused():
    class MyLSTM(nn.LSTM):
        def forward(self, x, hx=None):
            return super().forward(x, hx)

    with pytest.raises(TypeError, match="overrides forward"):
        Recorder(MyLSTM(2, 2))


@pytest.mark.parametrize("kind,proj,batch_first,given_state,bias",
                         [("lstm", 0, True, False, True), ("lstm", 3, False, True, True), ("lstm", 0, False, True, False),
                          ("gru", 0, True, True, True), ("gru", 0, False, False, False)])
def test_unroll_route_matches_reference_and_module(kind, proj, batch_first, given_state, bias):
    m = _module(kind, 2, False, batch_first, proj, bias=bias)
    B, T = 3, 9
    x = torch.randn(B, T, 4)
    h0 = torch.randn(2, B, proj or 5) if given_state else None
    c0 = torch.randn(2, B, 5) if given_state else None
    hx = None if not given_state else ((h0, c0) if kind == "lstm" else h0)
    inp = x if batch_first else x.transpose(0, 1)
    with torch.no_grad():
        plain_out, plain_hidden = m(inp, hx)
        with Recorder(m, kinds="all", route="unroll") as rec:
            out, hidden = m(inp, hx)
    torch.testing.assert_close(out, plain_out, atol=ATOL, rtol=0)
    for a, b in zip(hidden if kind == "lstm" else [hidden], plain_hidden if kind == "lstm" else [plain_hidden]):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    name = type(m).__name__.lower()
    _check_against(reference_unroll(m, x, torch.full((B,), T), h0, c0 if kind == "lstm" else None, name=name), rec)


def test_unroll_route_falls_back_where_it_does_not_apply():
    m = _module("lstm", 2, True, True, 0)
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        plain = m(x)[0]
        with Recorder(m, kinds="all", route="unroll") as rec:
            out = m(x)[0]
    assert torch.equal(out, plain)  # bidirectional: the fused route ran
    _check_against(reference_unroll(m, x, torch.full((2,), 5), name="lstm"), rec)
    with pytest.raises(ValueError, match="route"):
        Recorder(m, route="fast")


@pytest.mark.parametrize("kinds", ["c", "h,c", "gate_f,c"])
def test_cell_state_without_output_gate_matches_reference(kinds):
    m = _module("lstm", 2, True, True, 0)
    x = torch.randn(3, 6, 4)
    with torch.no_grad(), Recorder(m, kinds=kinds) as rec:
        m(x)
    ref = reference_unroll(m, x, torch.full((3,), 6), name="lstm")
    wanted = kinds.split(",")
    _check_against({k: v for k, v in ref.items() if k.rsplit(".", 1)[1] in wanted}, rec)


@pytest.mark.parametrize("hidden", [64, 33])
def test_lstm_gates_come_from_the_kernel_workspace(monkeypatch, hidden):
    """float32 on CPU: the gates are read from oneDNN's workspace (4H = 256 pads its rows to 272),
    not recomputed by matmul, and equal the reference unroll."""
    from lstmvis.capture import gates
    monkeypatch.setattr(gates, "layer_gates", lambda *a, **k: pytest.fail("matmul route used"))
    torch.manual_seed(3)
    m = nn.LSTM(7, hidden, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(3, 11, 7)
    with torch.no_grad(), Recorder(m, kinds="all") as rec:
        m(x)
    _check_against(reference_unroll(m, x, torch.full((3,), 11), name="lstm"), rec)


def test_workspace_with_another_layout_falls_back_to_matmul(monkeypatch):
    """A build whose workspace is laid out otherwise is detected, warned about, and still exact."""
    from lstmvis.capture import workspace
    monkeypatch.setitem(workspace.WORKSPACE, "usable", True)
    monkeypatch.setattr(workspace, "onednn_ld", lambda width: width + 1)
    m = _module("lstm", 2, False, True, 0)
    x = torch.randn(3, 6, 4)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="workspace"), Recorder(m, kinds="all") as rec:
        m(x)
    assert workspace.WORKSPACE["usable"] is False
    _check_against(reference_unroll(m, x, torch.full((3,), 6), name="lstm"), rec)


def test_deferred_cell_state_is_computed_on_read_and_equals_the_eager_one():
    """defer=True records c as a Deferred: nothing is computed until read, reading works after the
    recorder moved on (clear, another call) and from another thread, and the values are the eager ones."""
    from lstmvis import capture
    torch.manual_seed(5)
    m = nn.LSTM(5, 16, num_layers=2, bidirectional=True, batch_first=True).eval()
    x, x2 = torch.randn(3, 9, 5), torch.randn(3, 4, 5)
    with torch.no_grad(), Recorder(m, kinds="h,c") as eager:
        m(x)
    with torch.no_grad(), Recorder(m, kinds="h,c", defer=True) as rec:
        m(x)
        raw = dict(rec._calls)
        deferred = rec.deferred_states
        rec.clear()
        m(x2)
    assert all(isinstance(calls[0][0], capture.Deferred) for s, calls in raw.items() if s.endswith(".c"))
    results = {}
    worker = threading.Thread(target=lambda: results.update({s: d.result() for s, d in deferred.items()}))
    worker.start()
    worker.join()
    assert set(results) == set(eager.states)
    for s, v in eager.states.items():
        torch.testing.assert_close(results[s], v, rtol=0, atol=0)
    assert rec.states["lstm.l1.reverse.c"].shape == (3, 4, 16)  # the second call, computed on read
    ref = reference_unroll(m, x2, torch.full((3,), 4), name="lstm")
    _check_against({k: v for k, v in ref.items() if k.rsplit(".", 1)[1] in ("h", "c")}, rec)


def test_deferred_cell_state_falls_back_to_matmul_when_the_last_step_disagrees(monkeypatch):
    """A layout that only goes wrong after the first two steps is caught when c is computed: warned
    about, and c is recomputed by matmul, so the values stay exact."""
    from lstmvis.capture import gates, workspace
    monkeypatch.setitem(workspace.WORKSPACE, "usable", True)
    real = gates.cell_recurrence
    corrupted = {"n": 0}

    def recurrence(f, i, g, c0):
        c = real(f, i, g, c0)
        if corrupted["n"] == 0:  # the first deferred computation reads a wrong layout
            corrupted["n"] += 1
            c = c + 1.0
        return c
    torch.manual_seed(6)
    m = nn.LSTM(4, 8, batch_first=True).eval()
    x = torch.randn(2, 7, 4)
    with torch.no_grad(), Recorder(m, kinds="h,c", defer=True) as rec:
        m(x)
    monkeypatch.setattr(gates, "cell_recurrence", recurrence)
    with pytest.warns(RuntimeWarning, match="workspace"):
        states = rec.states
    assert workspace.WORKSPACE["usable"] is False
    ref = reference_unroll(m, x, torch.full((2,), 7), name="lstm")
    torch.testing.assert_close(states["lstm.l0.c"], ref["lstm.l0.c"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bidirectional,bias", [(False, True), (True, True), (True, False)])
def test_workspace_route_under_autograd_keeps_the_modules_outputs_and_gradients(monkeypatch, bidirectional, bias):
    """With autograd on (parameters require grad) the gates still come from oneDNN's workspace: the
    layer calls are the module's own on the graph, so outputs and every gradient are bitwise the
    unrecorded module's, and its backward pass leaves the recorded gates as they were."""
    from lstmvis.capture import gates
    monkeypatch.setattr(gates, "layer_gates", lambda *a, **k: pytest.fail("matmul route used"))
    torch.manual_seed(7)
    m = nn.LSTM(4, 6, num_layers=2, bidirectional=bidirectional, batch_first=True, bias=bias).eval()
    x = torch.randn(3, 8, 4)
    hx = tuple(torch.randn(2 * (2 if bidirectional else 1), 3, 6) for _ in range(2))

    def forward_backward(record):
        m.zero_grad()
        xg = x.clone().requires_grad_()
        if record:
            with Recorder(m, kinds="all") as rec:
                out, (h_n, c_n) = m(xg, hx)
        else:
            rec, (out, (h_n, c_n)) = None, m(xg, hx)
        (out.square().sum() + h_n.sum() + 2 * c_n.sum()).backward()
        return rec, (out, h_n, c_n, xg.grad, *[p.grad for p in m.parameters()])

    _, plain = forward_backward(record=False)
    rec, recorded = forward_backward(record=True)
    for a, b in zip(recorded, plain):
        assert torch.equal(a, b)
    assert not any(v.requires_grad for v in rec.states.values())
    _check_against(reference_unroll(m, x, torch.full((3,), 8), *hx, name="lstm"), rec)


def test_detached_false_under_autograd_takes_the_matmul_route_with_its_graph():
    """Gates read from a workspace carry no graph, so a recorder that keeps the graph computes them."""
    torch.manual_seed(8)
    m = nn.LSTM(4, 6, batch_first=True)
    with Recorder(m, kinds="all", detach=False) as rec:
        m(torch.randn(2, 5, 4))
    assert all(v.requires_grad for v in rec.states.values())


def test_workspace_route_asks_the_allocator_to_keep_its_size(monkeypatch):
    from lstmvis.capture import workspace
    sizes = []
    monkeypatch.setattr(workspace, "keep_heap_for", sizes.append)
    m = nn.LSTM(4, 16, num_layers=2).eval()
    with torch.no_grad(), Recorder(m, kinds="h,c"):
        m(torch.randn(5, 3, 4))
    assert len(sizes) == 2 and all(s >= 5 * 3 * 4 * workspace.onednn_ld(64) * 4 for s in sizes)


def test_keep_heap_for_only_raises_and_respects_the_opt_out_and_the_environment(monkeypatch):
    from lstmvis import allocator
    calls = []
    monkeypatch.setattr(allocator, "_mallopt", lambda settings: calls.append(settings) or True)
    monkeypatch.setitem(allocator._KEPT, "threshold", 0)
    monkeypatch.setenv(allocator.OPT_OUT_ENV, "0")
    assert allocator.keep_heap_for(100 * allocator.MiB) is False and calls == []
    monkeypatch.delenv(allocator.OPT_OUT_ENV)
    assert allocator.keep_heap_for(100 * allocator.MiB) is True
    assert [(option, value) for _, option, value in calls[0]] == [
        (allocator.M_MMAP_THRESHOLD, 256 * allocator.MiB), (allocator.M_TRIM_THRESHOLD, 1024 * allocator.MiB)]
    assert allocator.keep_heap_for(20 * allocator.MiB) is False  # never lowered
    assert allocator.keep_heap_for(allocator.KEEP_MAX) is False  # above the cap: left alone
    assert len(calls) == 1
    monkeypatch.undo()
    for env in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.setenv(env, str(64 * allocator.MiB))
    assert allocator._mallopt([("MALLOC_MMAP_THRESHOLD_", allocator.M_MMAP_THRESHOLD, 1),
                               ("MALLOC_TRIM_THRESHOLD_", allocator.M_TRIM_THRESHOLD, 1)]) is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=67108864")
    assert allocator._mallopt([("MALLOC_MMAP_THRESHOLD_", allocator.M_MMAP_THRESHOLD, 1)]) is False
