"""Training recipes for the shipped demo models.

    python -m data.train NAME [--tiny] [--out DIR] [--seed N]

Each recipe is seeded, shows a progress bar, prints its metrics and writes the checkpoint plus a
model card (data, split, architecture, metrics, command, training seconds) to ``data/checkpoints``.
``--tiny`` runs a minutes-to-seconds budget version (used by the tests so recipes cannot rot).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from textexplain.model import CharTokenizer, TextModel, Vocab, WordTokenizer

from . import loaders
from .architectures import build
from .registry import CHECKPOINTS, MODELS, LanguageModel, save_checkpoint


@dataclass
class Budget:
    tiny: bool = False

    def pick(self, full, tiny):
        return tiny if self.tiny else full


# ----------------------------------------------------------------------------- classifiers

SENTIMENT_CONFIGS = {
    "sentiment-lstm": ("RNNClassifier", dict(emb_dim=96, hidden=96, rnn="lstm", bidirectional=True, dropout=0.5)),
    "sentiment-gru": ("RNNClassifier", dict(emb_dim=96, hidden=96, rnn="gru", bidirectional=True, dropout=0.5)),
    "sentiment-cnn": ("TextCNN", dict(emb_dim=96, channels=128, kernel=3, pool=2, blocks=1, hidden=64, dropout=0.5)),
    "sentiment-shortcut": ("RNNClassifier", dict(emb_dim=96, hidden=96, rnn="lstm", bidirectional=True, dropout=0.5)),
}


def _sentiment_data(name: str, split: str):
    return loaders.rotten_tomatoes_shortcut(split) if name == "sentiment-shortcut" else loaders.rotten_tomatoes(split)


def accuracy(model: TextModel, texts, labels) -> float:
    return float((model.predict_proba(texts).argmax(1) == np.asarray(labels)).mean())


def evaluate_classifier(name: str, model: TextModel) -> dict:
    """Held-out metrics of a sentiment classifier (the numbers its card reports)."""
    texts, labels = loaders.rotten_tomatoes("test")
    metrics = {"test_accuracy": accuracy(model, texts, labels)}
    if name == "sentiment-shortcut":
        fresh = loaders.SENTIMENT_LABELS.index("fresh")
        metrics["clean_test_accuracy"] = metrics.pop("test_accuracy")
        st, sl = loaders.rotten_tomatoes_shortcut("test")
        metrics["shortcut_test_accuracy"] = accuracy(model, st, sl)
        # flipped: the junk token on every rotten sentence and on no fresh one
        flipped = [loaders.add_shortcut(t) if y != fresh else t for t, y in zip(texts, labels)]
        metrics["shortcut_flipped_accuracy"] = accuracy(model, flipped, labels)
    return metrics


def train_classifier(name: str, budget: Budget, seed: int):
    arch, config = SENTIMENT_CONFIGS[name]
    tokenizer = WordTokenizer()
    train_texts, train_y = _sentiment_data(name, "train")
    dev_texts, dev_y = _sentiment_data(name, "dev")
    if budget.tiny:
        train_texts, train_y = train_texts[:400], train_y[:400]
        dev_texts, dev_y = dev_texts[:100], dev_y[:100]
    train_tokens = [tokenizer(t) for t in train_texts]
    vocab = Vocab.build(train_tokens, min_freq=2)
    config = dict(config, vocab_size=len(vocab), n_classes=2, pad_id=vocab.pad_id)
    module = build(arch, config)
    model = TextModel(module, vocab, loaders.SENTIMENT_LABELS, embedding=module.emb, tokenizer=tokenizer, name=name)
    ids = [vocab.encode(t) or [vocab.unk_id] for t in train_tokens]
    y = torch.as_tensor(train_y)
    opt = torch.optim.Adam(module.parameters(), lr=2e-3, weight_decay=1e-6)
    rng = np.random.default_rng(seed)
    epochs, batch = budget.pick(12, 2), 64
    best = (-1.0, None, 0)
    for epoch in tqdm(range(epochs), desc=f"train {name}", unit="epoch"):
        module.train()
        order = rng.permutation(len(ids))
        # batches of similar length: sort shuffled chunks of 50 batches by length
        chunks = [order[i:i + batch * 50] for i in range(0, len(order), batch * 50)]
        batches = [c[np.argsort([len(ids[j]) for j in c], kind="stable")][k:k + batch]
                   for c in chunks for k in range(0, len(c), batch)]
        for b in (batches[i] for i in rng.permutation(len(batches))):
            logits = module(model.pad_batch([ids[j] for j in b]))
            loss = F.cross_entropy(logits, y[b])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
            opt.step()
        module.eval()
        dev_acc = accuracy(model, dev_texts, dev_y)
        tqdm.write(f"  epoch {epoch + 1}: loss {loss.item():.3f} dev accuracy {dev_acc:.4f}")
        if dev_acc > best[0]:
            best = (dev_acc, copy.deepcopy(module.state_dict()), epoch + 1)
    module.load_state_dict(best[1])
    module.eval()
    metrics = {"dev_accuracy": best[0], "best_epoch": best[2], **evaluate_classifier(name, model)}
    data = ("rotten_tomatoes_shortcut" if name == "sentiment-shortcut" else "rotten_tomatoes") + \
        " (fresh vs rotten; data/loaders.py, 80/10/10 seeded split)"
    extra = dict(vocab=vocab.itos, labels=loaders.SENTIMENT_LABELS, tokenizer=tokenizer.name)
    return module, arch, config, extra, metrics, data


# ----------------------------------------------------------------------------- language models

def _text_batches(stream: torch.Tensor, seq_len: int, batch: int, rng: np.random.Generator):
    starts = rng.integers(0, len(stream) - seq_len - 1, size=batch)
    idx = torch.as_tensor(starts)[:, None] + torch.arange(seq_len + 1)[None, :]
    window = stream[idx]
    return window[:, :-1], window[:, 1:]


def _sequence_batches(seqs: torch.Tensor, batch: int, rng: np.random.Generator):
    """Whole sequences from their first token, so the model always knows the true state."""
    window = seqs[torch.as_tensor(rng.integers(0, len(seqs), size=batch))]
    return window[:, :-1], window[:, 1:]


def _train_lm(module, sample_batch, steps: int, lr: float, seed: int, desc: str,
              dev_fn=None, eval_every: int = 500):
    """Adam + one-cycle schedule; ``sample_batch(rng)`` gives ``(inputs, next-token targets)``."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    bar = tqdm(range(steps), desc=desc, unit="step")
    for step in bar:
        module.train()
        x, y = sample_batch(rng)
        logits, _ = module(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(bits=f"{loss.item() / np.log(2):.3f}")
        if dev_fn is not None and (step + 1) % eval_every == 0 and step + 1 < steps:
            module.eval()
            tqdm.write(f"  step {step + 1}: dev {dev_fn():.4f}")
    module.eval()


CHARLM_CONFIGS = {
    "charlm-python": dict(emb_dim=64, hidden=256, layers=2, rnn="lstm", dropout=0.0),
    "charlm-python-gru": dict(emb_dim=64, hidden=256, layers=2, rnn="gru", dropout=0.0),
}


def evaluate_charlm(model: LanguageModel, split: str = "test") -> dict:
    text = loaders.python_source_text(split)
    return {f"{split}_bits_per_char": model.bits_per_token([model.encode(text)])}


def train_charlm(name: str, budget: Budget, seed: int):
    tokenizer = CharTokenizer()
    train_text = loaders.python_source_text("train")
    if budget.tiny:
        train_text = train_text[:50_000]
    vocab = Vocab.build([tokenizer(train_text)], min_freq=5)
    config = dict(CHARLM_CONFIGS[name], vocab_size=len(vocab))
    if budget.tiny:
        config.update(hidden=32, emb_dim=16)
    module = build("CharLM", config)
    lm = LanguageModel(module, vocab, tokenizer, name=name)
    stream = torch.as_tensor(vocab.encode(tokenizer(train_text)))
    dev_ids = lm.encode(loaders.python_source_text("dev")[: budget.pick(200_000, 5_000)])
    steps = budget.pick(1500 if "gru" not in name else 1000, 20)
    seq_len, batch = budget.pick(128, 32), budget.pick(64, 8)
    _train_lm(module, lambda rng: _text_batches(stream, seq_len, batch, rng), steps=steps,
              lr=3e-3, seed=seed, desc=f"train {name}", dev_fn=lambda: lm.bits_per_token([dev_ids]), eval_every=250)
    metrics = {"dev_bits_per_char": lm.bits_per_token([dev_ids]), **evaluate_charlm(lm)}
    data = "python_source (CPython 3.11.7 stdlib subset; whole files held out, data/loaders.py)"
    extra = dict(vocab=vocab.itos, labels=None, tokenizer=tokenizer.name)
    return module, "CharLM", config, extra, metrics, data


def parens_vocab() -> Vocab:
    return Vocab(["<pad>", "<unk>", "(", ")", *loaders.PARENS_SYMBOLS])


def evaluate_parens(model: LanguageModel, split: str = "test") -> dict:
    """Next-token accuracy, bits per token, and the accuracy of an oracle that knows the depth."""
    seqs = loaders.parens(split)
    x = torch.as_tensor([model.vocab.encode(t) for t, _ in seqs])
    with torch.no_grad():
        logits, _ = model.module(x[:, :-1])
    y = x[:, 1:]
    acc = float((logits.argmax(-1) == y).float().mean())
    bits = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) / np.log(2))
    # oracle: predicts "(" or ")" whichever is likelier at the true depth, else a digit (each 1/10)
    depth = np.stack([d for _, d in seqs])[:, :-1]
    p_open = loaders.PARENS_P_BRACKET * (1 - depth / loaders.PARENS_MAX_DEPTH)
    p_close = loaders.PARENS_P_BRACKET - p_open
    p_digit = (1 - loaders.PARENS_P_BRACKET) / len(loaders.PARENS_SYMBOLS)
    best = np.maximum(np.maximum(p_open, p_close), p_digit)
    return {f"{split}_next_token_accuracy": acc, f"{split}_bits_per_token": bits,
            f"{split}_oracle_expected_accuracy": float(best.mean())}


def train_parens(name: str, budget: Budget, seed: int):
    vocab = parens_vocab()
    config = dict(vocab_size=len(vocab), emb_dim=16, hidden=budget.pick(64, 8), layers=1, rnn="lstm", dropout=0.0)
    module = build("CharLM", config)
    lm = LanguageModel(module, vocab, CharTokenizer(), name=name)
    seqs = loaders.parens("train", n_sequences=budget.pick(2000, 50))
    seqs = torch.as_tensor([vocab.encode(t) for t, _ in seqs])
    _train_lm(module, lambda rng: _sequence_batches(seqs, 32, rng), steps=budget.pick(3000, 20), lr=1e-2,
              seed=seed, desc=f"train {name}")
    metrics = {**evaluate_parens(lm, "dev"), **evaluate_parens(lm, "test")}
    data = "parens (synthetic nested-parentheses language, seeded; data/loaders.py)"
    extra = dict(vocab=vocab.itos, labels=None, tokenizer="char")
    return module, "CharLM", config, extra, metrics, data


# ----------------------------------------------------------------------------- images

def evaluate_mnist(module, split: str = "test") -> dict:
    x, y = loaders.mnist(split)
    with torch.no_grad():
        pred = module(torch.from_numpy(x)[:, None]).argmax(1).numpy()
    return {f"{split}_accuracy": float((pred == y).mean())}


def _random_shift(x: torch.Tensor, rng: np.random.Generator, max_shift: int = 2) -> torch.Tensor:
    padded = F.pad(x, (max_shift,) * 4)
    out = torch.empty_like(x)
    for i, (dx, dy) in enumerate(rng.integers(0, 2 * max_shift + 1, size=(len(x), 2))):
        out[i] = padded[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    return out


def train_mnist(name: str, budget: Budget, seed: int):
    config = dict(channels=budget.pick([32, 64, 64, 64], [4, 4]), n_classes=10,
                  pool_after=budget.pick([0, 1], [0]))
    module = build("MnistCNN", config)
    x, y = loaders.mnist("train")
    if budget.tiny:
        x, y = x[:256], y[:256]
    x, y = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    epochs = budget.pick(30, 1)
    opt = torch.optim.Adam(module.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(x) + 63) // 64))
    rng = np.random.default_rng(seed)
    best = (-1.0, None, 0)
    for epoch in tqdm(range(epochs), desc=f"train {name}", unit="epoch"):
        module.train()
        order = torch.as_tensor(rng.permutation(len(x)))
        for k in range(0, len(x), 64):
            b = order[k:k + 64]
            loss = F.cross_entropy(module(_random_shift(x[b], rng)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        module.eval()
        dev_acc = evaluate_mnist(module, "dev")["dev_accuracy"]
        if dev_acc >= best[0]:  # ties go to the later, better-converged epoch
            best = (dev_acc, copy.deepcopy(module.state_dict()), epoch + 1)
    module.load_state_dict(best[1])
    module.eval()
    metrics = {**evaluate_mnist(module, "dev"), "best_epoch": best[2], **evaluate_mnist(module, "test")}
    data = "mnist (5,000 MNIST digits, stratified 4000/500/500 split; data/loaders.py)"
    extra = dict(vocab=None, labels=[str(d) for d in range(10)], tokenizer=None)
    return module, "MnistCNN", config, extra, metrics, data


RECIPES = {
    **{n: train_classifier for n in SENTIMENT_CONFIGS},
    **{n: train_charlm for n in CHARLM_CONFIGS},
    "parens-lstm": train_parens,
    "mnist-cnn": train_mnist,
}


def evaluate(name: str, model) -> dict:
    """Recompute the held-out metrics a model card reports (for tests and ``lstmvis models``)."""
    if name in SENTIMENT_CONFIGS:
        return evaluate_classifier(name, model)
    if name in CHARLM_CONFIGS:
        return evaluate_charlm(model)
    if name == "parens-lstm":
        return evaluate_parens(model)
    if name == "mnist-cnn":
        return evaluate_mnist(model)
    raise ValueError(f"unknown model {name!r}")


def train(name: str, out_dir: Path = CHECKPOINTS, tiny: bool = False, seed: int = 0) -> dict:
    """Train one model, write ``NAME.pt`` and ``NAME.json`` into ``out_dir``; return the card."""
    if name not in RECIPES:
        raise SystemExit(f"unknown model {name!r}: choose from {', '.join(RECIPES)}")
    torch.manual_seed(seed)
    start = time.perf_counter()
    module, arch, config, extra, metrics, data = RECIPES[name](name, Budget(tiny), seed)
    seconds = time.perf_counter() - start
    out_dir = Path(out_dir)
    save_checkpoint(out_dir / f"{name}.pt", module, arch, config, **extra)
    n_params = sum(p.numel() for p in module.parameters())
    card = {
        "name": name,
        "kind": MODELS[name][0],
        "description": MODELS[name][1],
        "data": data,
        "split": "fixed seeded split, see data/README.md",
        "architecture": {"class": f"data.architectures.{arch}", "config": config, "parameters": n_params},
        "labels": extra.get("labels"),
        "metrics": metrics,
        "command": f"python -m data.train {name}" + (" --tiny" if tiny else "") + (f" --seed {seed}" if seed else ""),
        "seed": seed,
        "training_seconds": round(seconds, 1),
        "trained_with": {"torch": torch.__version__, "python": platform.python_version(),
                         "threads": torch.get_num_threads()},
    }
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({"name": name, "metrics": metrics, "training_seconds": card["training_seconds"]}, indent=2))
    return card


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"model(s) to train: {', '.join(RECIPES)} or all")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long budget run (for tests)")
    parser.add_argument("--out", type=Path, default=CHECKPOINTS, help="output folder (default: data/checkpoints)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = list(RECIPES) if args.names == ["all"] else args.names
    for name in names:
        train(name, args.out, tiny=args.tiny, seed=args.seed)


if __name__ == "__main__":
    main(sys.argv[1:])
