"""Recipe: a models file for ``lstmvis serve --models FILE.py``.

The command runs this file once, at start, and serves what ``models()`` returns (and ``stores()``,
when defined) beside the shipped models:

    lstmvis serve --models docs/examples/models_file.py

Here ``models()`` trains a small GRU sentiment classifier of its own class for two seconds on the
shipped Rotten Tomatoes sentences. Run as a script, the file serves the same models from Python.
"""
import os
import time

import torch
from torch import nn

import data
from textexplain import TextModel, Vocab


class TinyGRU(nn.Module):
    def __init__(self, n_tokens: int):
        super().__init__()
        self.emb = nn.Embedding(n_tokens, 24, padding_idx=0)
        self.rnn = nn.GRU(24, 24, batch_first=True)
        self.out = nn.Linear(24, 2)

    def forward(self, ids):
        h, _ = self.rnn(self.emb(ids))
        return self.out(h[:, -1])


def tokenize(text: str) -> list[str]:
    return text.lower().split()


def models() -> dict:
    """``{name: model}``: what `lstmvis serve --models` serves."""
    torch.manual_seed(0)
    texts, labels = data.rotten_tomatoes("train")
    words = sorted({w for t in texts for w in tokenize(t)})
    vocab = Vocab(["<pad>", "<unk>", *words])
    module = TinyGRU(len(vocab.itos))
    opt = torch.optim.Adam(module.parameters(), lr=5e-3)
    start = time.perf_counter()
    while time.perf_counter() - start < 2:
        pick = torch.randint(0, len(texts), (64,)).tolist()
        rows = [vocab.encode(tokenize(texts[i]))[-30:] for i in pick]
        ids = torch.zeros(len(rows), 30, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, 30 - len(row):] = torch.tensor(row)  # padded on the left: the last step is a word
        loss = nn.functional.cross_entropy(module(ids), torch.as_tensor(labels[pick]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    return {"tiny-gru": TextModel(module, vocab, ["rotten", "fresh"], embedding=module.emb, tokenizer=tokenize,
                                  name="tiny-gru")}


if __name__ == "__main__":
    import lstmvis

    if os.environ.get("LSTMVIS_EXAMPLE_CI"):  # the docs test: serve, ask, stop
        import requests

        with lstmvis.serve(models=models(), port=0, block=False) as server:
            answer = requests.post(server.url + "api/explain", timeout=120, json={
                "model": "tiny-gru", "text": "a dull, tired film", "methods": ["gradient"], "faithfulness": False})
            assert answer.status_code == 200, answer.text
            print(f"served {server.url}: tiny-gru explained")
    else:
        server = lstmvis.serve(models=models(), block=False)
        print(f"lstmvis: open {server.url}explain?model=tiny-gru  (Ctrl+C to stop)")
        server.wait()
