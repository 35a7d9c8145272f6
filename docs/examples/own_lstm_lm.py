"""Recipe: your own character-level LSTM language model -> a state store -> the browser.

The model is a plain ``nn.Module`` whose ``forward(ids)`` returns logits (no state in or out); it is
trained for a few seconds on a few KB of Python source, wrapped as ``lstmvis.LanguageModel``, its
hidden states are extracted into a store, and both are served: the explorer and cells pages show
the store, and a cell explanation runs on the model.

    python docs/examples/own_lstm_lm.py        # serves until Ctrl+C and prints the address
"""
import os
import time

import requests
import torch
from torch import nn

import data
import lstmvis
from textexplain import Vocab

torch.manual_seed(0)
TEXT = data.python_source_text("train")[:6000]  # a few KB of the shipped corpus
vocab = Vocab(["<pad>", "<unk>", *sorted(set(TEXT))])


class CharLSTM(nn.Module):
    """Your own class: embedding -> LSTM -> linear, ``forward(ids) -> logits``."""

    def __init__(self, n_tokens: int, dim: int = 48):
        super().__init__()
        self.emb = nn.Embedding(n_tokens, 16)
        self.rnn = nn.LSTM(16, dim, batch_first=True)
        self.out = nn.Linear(dim, n_tokens)

    def forward(self, ids):
        h, _ = self.rnn(self.emb(ids))
        return self.out(h)


module = CharLSTM(len(vocab.itos))
ids = torch.tensor(vocab.encode(list(TEXT)))
opt = torch.optim.Adam(module.parameters(), lr=3e-3)
start = time.perf_counter()
while time.perf_counter() - start < 4:  # a few seconds of training on 64-character windows
    at = torch.randint(0, len(ids) - 65, (32,))
    batch = torch.stack([ids[i:i + 65] for i in at])
    loss = nn.functional.cross_entropy(module(batch[:, :-1]).transpose(1, 2), batch[:, 1:])
    opt.zero_grad()
    loss.backward()
    opt.step()
module.eval()

# list is the tokenizer: one token per character.
lm = lstmvis.LanguageModel(module, vocab, list, name="my-char-lm")
texts = [TEXT[i:i + 500] for i in range(0, 3000, 500)]
store = lstmvis.extract(lm, texts, "my-char-lm.h5", name="my-char-lm", progress=False)  # the card names the model

if os.environ.get("LSTMVIS_EXAMPLE_CI"):  # the docs test: serve, ask, stop
    with lstmvis.serve(models={"my-char-lm": lm}, stores=[store], port=0, block=False) as server:
        listed = {s["name"]: s for s in requests.get(server.url + "api/stores", timeout=30).json()["stores"]}
        assert listed["my-char-lm"]["model"] == "my-char-lm", listed
        source = next(s for s in store.sources if s.endswith(".c"))
        answer = requests.post(server.url + "api/stores/my-char-lm/cells/0/explain", timeout=120,
                               json={"source": source, "position": 40, "method": "gradient"})
        assert answer.status_code == 200, answer.text
        print(f"served {server.url}: store my-char-lm linked to its model, cell 0 explained")
else:
    server = lstmvis.serve(models={"my-char-lm": lm}, stores=[store], block=False)
    print(f"lstmvis: open {server.url}cells?store=my-char-lm  (Ctrl+C to stop)")
    server.wait()
