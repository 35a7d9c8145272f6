"""Recipe: your own GRU classifier and your own text CNN, with your own tokenizer -> explanations in
the browser.

Both are plain ``nn.Module`` classes defined here, trained for a few seconds on the shipped Rotten
Tomatoes sentences, and wrapped as ``textexplain.TextModel``. Served, both appear on the
explanations page; the text CNN also on the text-CNN page (any Conv1d stack that ``lstmvis.textcnn``
can map), over the texts of any store with texts.

    python docs/examples/own_classifier.py     # serves until Ctrl+C and prints the address
"""
import os
import re
import time
from collections import Counter

import requests
import torch
from torch import nn

import data
import lstmvis
from textexplain import TextModel, Vocab

torch.manual_seed(0)


class Words:
    """Your own tokenizer: lower-cased words and punctuation; ``spans`` says where each token is."""

    pattern = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")

    def __call__(self, text: str) -> list[str]:
        return self.pattern.findall(text.lower())

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self.pattern.finditer(text.lower())]


class GRUClassifier(nn.Module):
    def __init__(self, n_tokens: int, dim: int = 32):
        super().__init__()
        self.emb = nn.Embedding(n_tokens, 32, padding_idx=0)
        self.rnn = nn.GRU(32, dim, batch_first=True)
        self.out = nn.Linear(dim, 2)

    def forward(self, ids):
        h, _ = self.rnn(self.emb(ids))
        mask = (ids != 0).unsqueeze(-1)
        return self.out((h * mask).sum(1) / mask.sum(1).clamp(min=1))  # mean over the real tokens


class MyTextCNN(nn.Module):
    def __init__(self, n_tokens: int, filters: int = 16):
        super().__init__()
        self.emb = nn.Embedding(n_tokens, 32, padding_idx=0)
        self.conv = nn.Conv1d(32, filters, kernel_size=3, padding=1)
        self.out = nn.Linear(filters, 2)

    def forward(self, ids):
        h = torch.relu(self.conv(self.emb(ids).transpose(1, 2)))
        return self.out(h.max(dim=2).values)


tokenize = Words()
texts, labels = data.rotten_tomatoes("train")
counts = Counter(t for text in texts for t in tokenize(text))
vocab = Vocab(["<pad>", "<unk>", *[t for t, n in counts.most_common() if n >= 2]])


def train(module: nn.Module, seconds: float = 4.0) -> nn.Module:
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    y = torch.tensor(labels)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        pick = torch.randint(0, len(texts), (64,))
        rows = [vocab.encode(tokenize(texts[i]))[:40] for i in pick]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
        loss = nn.functional.cross_entropy(module(ids), y[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module.eval()


models = {}
for name, cls in (("my-gru", GRUClassifier), ("my-cnn", MyTextCNN)):
    module = train(cls(len(vocab.itos)))
    models[name] = TextModel(module, vocab, ["rotten", "fresh"], embedding=module.emb, tokenizer=tokenize, name=name)

# a small store with texts: the corpus the text-CNN page runs the CNN over
test_texts, _ = data.rotten_tomatoes("test")
store = lstmvis.extract(models["my-gru"], test_texts[:200], "reviews.h5", progress=False)

if os.environ.get("LSTMVIS_EXAMPLE_CI"):  # the docs test: serve, ask, stop
    with lstmvis.serve(models=models, stores=[store], port=0, block=False) as server:
        listed = [m["name"] for m in requests.get(server.url + "api/explain/models", timeout=30).json()["models"]]
        assert {"my-gru", "my-cnn"} <= set(listed), listed
        answer = requests.post(server.url + "api/explain", timeout=120, json={
            "model": "my-gru", "text": "a warm, funny and moving film", "methods": ["gradient"], "faithfulness": False})
        assert answer.status_code == 200, answer.text
        filters = requests.get(server.url + "api/textcnn/filters", timeout=120,
                               params={"model": "my-cnn", "store": "reviews", "k": 3})
        assert filters.status_code == 200 and filters.json()["filters"], filters.text
        print(f"served {server.url}: my-gru explained, my-cnn's {len(filters.json()['filters'])} filters shown")
else:
    server = lstmvis.serve(models=models, stores=[store], block=False)
    print(f"lstmvis: open {server.url}explain?model=my-gru and {server.url}textcnn?model=my-cnn  (Ctrl+C to stop)")
    server.wait()
