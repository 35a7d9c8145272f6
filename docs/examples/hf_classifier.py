"""Recipe: explain a Hugging Face classifier (docs/your-own-models.md, "A Hugging Face classifier").

Trains a WordPiece tokenizer and a tiny BERT on the shipped Rotten Tomatoes sentences (well under a
minute on one core; nothing downloads), wraps it with ``TextModel.from_huggingface`` and explains a
sentence with three methods. With your own model, replace the training by
``AutoModelForSequenceClassification.from_pretrained(path).eval()`` and
``AutoTokenizer.from_pretrained(path)``. Writes hf_explanations.html to the current folder.

    python docs/examples/hf_classifier.py
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally

import numpy as np
import requests
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

import lstmvis
import textexplain
from data.loaders import SENTIMENT_LABELS, rotten_tomatoes
from textexplain import TextModel

torch.manual_seed(0)
torch.set_num_threads(1)
train_texts, train_labels = rotten_tomatoes("train")
dev_texts, dev_labels = rotten_tomatoes("dev")

# 1. A WordPiece tokenizer trained on the training sentences, as a transformers fast tokenizer.
backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
backend.normalizer = normalizers.BertNormalizer(lowercase=True)
backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
backend.train_from_iterator(train_texts, trainers.WordPieceTrainer(
    vocab_size=3000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
backend.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", special_tokens=[("[CLS]", backend.token_to_id("[CLS]")),
                                             ("[SEP]", backend.token_to_id("[SEP]"))])
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                    cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)

# 2. A tiny BERT, trained for two epochs with the tokenizer's own padding and attention mask.
config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=64, num_labels=2,
                    id2label=dict(enumerate(SENTIMENT_LABELS)), label2id={k: i for i, k in enumerate(SENTIMENT_LABELS)},
                    pad_token_id=tokenizer.pad_token_id)
model = BertForSequenceClassification(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
labels = torch.as_tensor(train_labels)
for epoch in range(2):
    model.train()
    for start in torch.randperm(len(train_texts)).split(64):
        batch = tokenizer([train_texts[i] for i in start], padding=True, truncation=True, return_tensors="pt")
        loss = model(**batch, labels=labels[start]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
model.eval()  # TextModel refuses a model in training mode (dropout); it never changes the model itself
model.zero_grad(set_to_none=True)

# 3. Wrap it: labels from config.id2label, [CLS]/[SEP] kept in every forward pass but never scored.
text_model = TextModel.from_huggingface(model, tokenizer, name="tiny-bert-sentiment")
dev = [(t, y) for t, y in zip(dev_texts, dev_labels) if len(text_model.tokenizer(t)) <= text_model.max_tokens]
predicted = text_model.predict_proba([t for t, _ in dev]).argmax(1)
accuracy = float(np.mean(predicted == np.array([y for _, y in dev])))
print(f"{text_model}: dev accuracy {accuracy:.3f} on {len(dev)} sentences")

# 4. Explain one sentence with three methods; sub-word tokens merged into words for the page.
sentence = "an utterly charming and hilarious film, though the ending drags"
explanations = [textexplain.IntegratedGradients(text_model).explain(sentence),
                textexplain.Occlusion(text_model).explain(sentence),
                textexplain.Shap(text_model, seed=0).explain(sentence)]
print("tokens:", explanations[0].tokens)
for e in explanations:
    words = e.to_words()
    print(f"{e.method:>22} ({e.target_label}):", ", ".join(f"{w} {s:+.2f}" for w, s in zip(words.tokens, words.scores)))
page = textexplain.write_html("hf_explanations.html", textexplain.side_by_side_html(explanations, words=True))
print(f"wrote {page}")

# 5. The explanations page (and the workbench) for the same model in the browser.
if os.environ.get("LSTMVIS_EXAMPLE_CI"):  # the docs test: serve, ask, stop
    with lstmvis.serve(models={text_model.name: text_model}, port=0, block=False) as server:
        answer = requests.post(server.url + "api/explain", timeout=120, json={
            "model": text_model.name, "text": sentence, "methods": ["gradient"], "faithfulness": False})
        assert answer.status_code == 200, answer.text
        print(f"served {server.url}: {text_model.name} explained in the browser's API")
else:
    server = lstmvis.serve(models={text_model.name: text_model}, block=False)
    print(f"lstmvis: open {server.url}explain?model={text_model.name}  (Ctrl+C to stop)")
    server.wait()
