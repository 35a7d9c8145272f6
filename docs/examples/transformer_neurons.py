"""Transformer neurons, LSTMVis-style: record the encoder MLP neurons of the shipped sentiment-transformer
with ``Recorder`` modules, rank them against hypotheses, then select a neuron pattern and match it.

    python docs/examples/transformer_neurons.py

The same ``modules=[...]`` works for any model of your own: qualified names, globs (``*`` one name part,
``**`` any number), module types or instances; every chosen module whose output is ``(B, T, D)`` becomes a
source named after it.
"""
import os
import sys
from pathlib import Path

import numpy as np
import requests

import lstmvis
from textexplain import providers

CI = os.environ.get("LSTMVIS_EXAMPLE_CI") == "1"
N_SENTENCES = 300 if CI else 1275
NEURONS = "encoder.1.activation"  # the second block's MLP after its ReLU: 192 neurons per token

model = providers.load_model("sentiment-transformer")  # a textexplain.TextModel
texts, labels = providers.load_labelled_corpus("rotten_tomatoes:test")
texts, labels = texts[:N_SENTENCES], labels[:N_SENTENCES]
meta = {"label": [np.full(len(model.encode(t)), y) for t, y in zip(texts, labels)]}  # one value per token

store = lstmvis.extract(model, texts, Path("transformer-neurons.h5"), modules=["encoder.*", "encoder.*.activation"],
                        meta=meta, name="sentiment-transformer", progress=not CI)
print(f"store: {store.n_tokens} tokens of {store.n_sequences} sentences, sources {store.sources}")

is_negation = lstmvis.hypotheses.token_in(["not", "no", "never", "n't", "nothing"])
negation = lstmvis.rank_cells(store, NEURONS, is_negation)
fresh = lstmvis.rank_cells(store, NEURONS, lstmvis.hypotheses.meta("label", "fresh"))
for title, ranking in (("negation words", negation), ("label fresh", fresh)):
    top = ranking.order[:3]
    print(f"{title}: neurons {top.tolist()} AUROC {np.round(ranking.scores[top], 3).tolist()}")

neuron = int(negation.order[0])
high = negation.direction[neuron] > 0
values = store.states(NEURONS)[:, neuron]
at_negation = np.flatnonzero(is_negation(store))  # the negation token where this neuron is most on
position = int(at_negation[np.argmax(values[at_negation] if high else -values[at_negation])])
sentence = int(store.sequence_of(position))
print(f"neuron {neuron} at {store.tokens(position, position + 1)[0]!r} in: {store.sequence_text(sentence)}")

threshold = float(np.quantile(values, 0.9)) if high else 0.0
cells = lstmvis.select(store, NEURONS, position, position + 1, threshold=threshold, pad_left=0)
print(f"{len(cells)} neurons are >= {threshold:.2f} at that token")
result = lstmvis.match(store, NEURONS, cells[:8], threshold=threshold, min_length=1, top=5,
                       index_dir=Path("transformer-neurons.index"), progress=False)
for hit in result.hits:
    print(f"  match {hit.start}-{hit.stop}: {' '.join(store.tokens(hit.start, hit.stop))!r}")

# The store in the browser (the shipped model is served anyway; the store links to it by its card):
# the explorer shows the neurons LSTMVis-style.
if CI:  # the docs test: serve, ask, stop
    with lstmvis.serve(stores=[store], port=0, block=False) as server:
        listed = requests.get(server.url + "api/stores", timeout=30).json()
        assert "transformer-neurons" in str(listed), listed
        print(f"served {server.url}: the explorer lists transformer-neurons")
else:
    server = lstmvis.serve(stores=[store], block=False)
    print(f"lstmvis: open {server.url}explorer?store=transformer-neurons&source={NEURONS}  (Ctrl+C to stop)")
    server.wait()
store.close()
