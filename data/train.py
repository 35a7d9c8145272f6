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
    "sentiment-transformer": ("TransformerClassifier", dict(emb_dim=96, heads=4, layers=2, ff=192, max_len=512,
                                                            dropout=0.2)),
}
SENTIMENT_LR = {"sentiment-transformer": 1e-3}  # Adam learning rate where 2e-3 is too high


# Data randomization (Adebayo et al. 2018): the same architecture on the same texts with the train
# labels permuted (seeded), trained until it memorizes them. Dropout is off (it has no weights, so
# the architecture and its checkpoint are the same) and the last epoch is kept: dev accuracy is
# chance by design, so it cannot pick an epoch.
RANDOMIZED = {"sentiment-cnn-randlabels": "sentiment-cnn", "mnist-cnn-randlabels": "mnist-cnn"}
RANDOMIZED_LABEL_SEED = 1234
RANDOMIZED_NOTE = (f"; RANDOMIZED LABELS: the train labels permuted with seed {RANDOMIZED_LABEL_SEED} "
                   "(data.train.permuted_labels), dev and test labels true")


def permuted_labels(labels: np.ndarray, seed: int = RANDOMIZED_LABEL_SEED) -> np.ndarray:
    """The train labels of a randomized-labels recipe: ``labels`` in a seeded random order."""
    return np.asarray(labels)[np.random.default_rng(seed).permutation(len(labels))]


def _sentiment_data(name: str, split: str):
    return loaders.rotten_tomatoes_shortcut(split) if name == "sentiment-shortcut" else loaders.rotten_tomatoes(split)


def accuracy(model: TextModel, texts, labels) -> float:
    return float((model.predict_proba(texts).argmax(1) == np.asarray(labels)).mean())


def evaluate_classifier(name: str, model: TextModel) -> dict:
    """Held-out metrics of a sentiment classifier (the numbers its card reports); a randomized-labels
    model also reports its accuracy on the permuted train labels it memorized."""
    texts, labels = loaders.rotten_tomatoes("test")
    metrics = {"test_accuracy": accuracy(model, texts, labels)}
    if name in RANDOMIZED:
        train_texts, train_y = loaders.rotten_tomatoes("train")
        metrics["train_accuracy_permuted_labels"] = accuracy(model, train_texts, permuted_labels(train_y))
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
    randomized = name in RANDOMIZED
    arch, config = SENTIMENT_CONFIGS[RANDOMIZED.get(name, name)]
    tokenizer = WordTokenizer()
    train_texts, train_y = _sentiment_data(name, "train")
    dev_texts, dev_y = _sentiment_data(name, "dev")
    if randomized:
        train_y = permuted_labels(train_y)
        config = dict(config, dropout=0.0)
    if budget.tiny:
        train_texts, train_y = train_texts[:400], train_y[:400]
        dev_texts, dev_y = dev_texts[:100], dev_y[:100]
    train_tokens = [tokenizer(t) for t in train_texts]
    vocab = Vocab.build(train_tokens, min_freq=2)
    config = dict(config, vocab_size=len(vocab), n_classes=2, pad_id=vocab.pad_id)
    module = build(arch, config)
    model = TextModel(module.eval(), vocab, loaders.SENTIMENT_LABELS, embedding=module.emb, tokenizer=tokenizer, name=name)
    ids = [vocab.encode(t) or [vocab.unk_id] for t in train_tokens]
    y = torch.as_tensor(train_y)
    opt = torch.optim.Adam(module.parameters(), lr=SENTIMENT_LR.get(name, 2e-3), weight_decay=1e-6)
    rng = np.random.default_rng(seed)
    epochs, batch = budget.pick(30 if randomized else 12, 2), 64
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
        if dev_acc > best[0] or randomized:  # randomized: the last epoch (dev accuracy is chance)
            best = (dev_acc, copy.deepcopy(module.state_dict()), epoch + 1)
    module.load_state_dict(best[1])
    module.eval()
    metrics = {"dev_accuracy": best[0], ("epochs" if randomized else "best_epoch"): best[2],
               **evaluate_classifier(name, model)}
    data = ("rotten_tomatoes_shortcut" if name == "sentiment-shortcut" else "rotten_tomatoes") + \
        " (fresh vs rotten; data/loaders.py, 80/10/10 seeded split)"
    extra = dict(vocab=vocab.itos, labels=loaders.SENTIMENT_LABELS, tokenizer=tokenizer.name)
    if randomized:
        data += RANDOMIZED_NOTE
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


class _ContiguousStreams:
    """Stateful truncated-BPTT batches: ``batch`` contiguous streams over the token stream.

    Each epoch cuts ``stream`` (from a random offset below ``seq_len``) into ``batch`` equal
    contiguous parts and walks them in ``seq_len`` windows, so window k+1 of a row continues
    window k and the trainer carries the (detached) state across. ``__call__(rng)`` returns
    ``(inputs, targets, reset)``; ``reset`` is true at the first window of an epoch.
    """

    def __init__(self, stream: torch.Tensor, seq_len: int, batch: int):
        if len(stream) < batch * (seq_len + 2) + seq_len:
            raise ValueError(f"{len(stream)} tokens are too few for {batch} streams of {seq_len}-token windows")
        self.stream, self.seq_len, self.batch = stream, seq_len, batch
        self.rows, self.pos = None, 0

    def __call__(self, rng: np.random.Generator):
        reset = self.rows is None or self.pos + self.seq_len + 1 > self.rows.shape[1]
        if reset:
            offset = int(rng.integers(0, self.seq_len))
            part = (len(self.stream) - offset) // self.batch
            self.rows = self.stream[offset:offset + part * self.batch].view(self.batch, part)
            self.pos = 0
        window = self.rows[:, self.pos:self.pos + self.seq_len + 1]
        self.pos += self.seq_len
        return window[:, :-1], window[:, 1:], reset


def _detach_state(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _train_lm(module, sample_batch, steps: int, lr: float, seed: int, desc: str,
              dev_fn=None, eval_every: int = 500, stateful: bool = False):
    """Adam + one-cycle schedule; ``sample_batch(rng)`` gives ``(inputs, next-token targets)``.

    ``stateful``: ``sample_batch`` gives ``(inputs, targets, reset)`` and each batch starts from
    the previous batch's final state, detached (truncated BPTT), or from zero where ``reset``.
    """
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    bar = tqdm(range(steps), desc=desc, unit="step")
    state = None
    for step in bar:
        module.train()
        if stateful:
            x, y, reset = sample_batch(rng)
            logits, state = module(x, None if reset else state)
            state = _detach_state(state)
        else:
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

# Phase 2 (only where listed): stateful truncated BPTT over contiguous streams, continuing from
# phase 1's weights. Phase 1's random 128-char windows start from a zero state, so the model never
# learns to carry "inside a docstring / comment" across more than 128 characters; here the state
# flows on from window to window, as it does when the model reads a whole file.
CHARLM_PHASE2 = {
    "charlm-python": dict(steps=1000, seq_len=128, batch=64, lr=1e-3),
}


def evaluate_charlm(model: LanguageModel, split: str = "test") -> dict:
    text = loaders.python_source_text(split)
    return {f"{split}_bits_per_char": model.bits_per_token([model.encode(text)])}


def train_charlm(name: str, budget: Budget, seed: int, warm_start: Path | None = None):
    """Phase 1: random 128-char windows from a zero state. Phase 2 (``CHARLM_PHASE2``): stateful
    truncated BPTT. ``warm_start``: a checkpoint phase 1 of this recipe wrote (with its card next
    to it); phase 1 is loaded from it instead of being run again."""
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
    phases = []
    if warm_start is None:
        start = time.perf_counter()
        _train_lm(module, lambda rng: _text_batches(stream, seq_len, batch, rng), steps=steps,
                  lr=3e-3, seed=seed, desc=f"train {name}", dev_fn=lambda: lm.bits_per_token([dev_ids]),
                  eval_every=250)
        phase1_seconds = time.perf_counter() - start
    else:
        phase1_seconds = _load_phase1(module, warm_start, config, vocab)
    phase2 = CHARLM_PHASE2.get(name)
    if phase2 is None:
        metrics = {"dev_bits_per_char": lm.bits_per_token([dev_ids]), **evaluate_charlm(lm)}
    else:
        phases.append(dict(phase=1, what="random windows from a zero state", steps=steps, seq_len=seq_len,
                           batch=batch, lr=3e-3, seconds=round(phase1_seconds, 1),
                           dev_bits_per_char=lm.bits_per_token([dev_ids]),
                           **({"loaded_from": str(warm_start)} if warm_start is not None else {})))
        p2 = dict(phase2, **(dict(steps=20, seq_len=32, batch=4) if budget.tiny else {}))
        start = time.perf_counter()
        _train_lm(module, _ContiguousStreams(stream, p2["seq_len"], p2["batch"]), steps=p2["steps"], lr=p2["lr"],
                  seed=seed + 1, desc=f"train {name} (stateful)", dev_fn=lambda: lm.bits_per_token([dev_ids]),
                  eval_every=200, stateful=True)
        metrics = {"dev_bits_per_char": lm.bits_per_token([dev_ids]), **evaluate_charlm(lm)}
        phases.append(dict(phase=2, what="stateful truncated BPTT over contiguous streams", **p2,
                           seconds=round(time.perf_counter() - start, 1),
                           dev_bits_per_char=metrics["dev_bits_per_char"]))
    data = "python_source (CPython 3.11.7 stdlib subset; whole files held out, data/loaders.py)"
    extra = dict(vocab=vocab.itos, labels=None, tokenizer=tokenizer.name)
    if phases:
        extra["card"] = {"phases": phases, "training_seconds": round(sum(p["seconds"] for p in phases), 1)}
    return module, "CharLM", config, extra, metrics, data


def _load_phase1(module, path: Path, config: dict, vocab: Vocab) -> float:
    """Load phase-1 weights for a warm start; return the phase-1 seconds from the card beside them."""
    from .registry import load_checkpoint, read_card

    ckpt = load_checkpoint(path)
    if ckpt.get("arch") != "CharLM" or ckpt.get("config") != config or ckpt.get("vocab") != vocab.itos:
        raise SystemExit(f"{path} is not a phase-1 checkpoint of this recipe (architecture, config or vocabulary "
                         "differ)")
    card_path = Path(path).with_suffix(".json")
    if not card_path.is_file():
        raise SystemExit(f"{card_path} (the card with phase 1's training seconds) is missing")
    card = read_card(card_path)
    if "phases" in card:
        raise SystemExit(f"{path} already went through phase 2 ({card_path} lists its phases): warm-start from a "
                         "phase-1 checkpoint")
    module.load_state_dict(ckpt["state_dict"])
    return float(card["training_seconds"])


def parens_vocab() -> Vocab:
    return Vocab(["<pad>", "<unk>", "(", ")", *loaders.PARENS_SYMBOLS])


def evaluate_parens(model: LanguageModel, split: str = "test") -> dict:
    """Next-token accuracy, bits per token, and the accuracy of an oracle that knows the depth."""
    seqs = loaders.parens(split)
    x = torch.as_tensor([model.vocab.encode(t) for t, _ in seqs])
    with torch.no_grad():
        logits, _ = model.step(x[:, :-1])
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

def evaluate_mnist(module, split: str = "test", permuted: bool = False) -> dict:
    """Accuracy on one split; ``permuted``: on the permuted train labels of a randomized recipe."""
    x, y = loaders.mnist(split)
    if permuted:
        y = permuted_labels(y)
    with torch.no_grad():
        pred = module(torch.from_numpy(x)[:, None]).argmax(1).numpy()
    return {f"{split}_accuracy" + ("_permuted_labels" if permuted else ""): float((pred == y).mean())}


def _random_shift(x: torch.Tensor, rng: np.random.Generator, max_shift: int = 2) -> torch.Tensor:
    padded = F.pad(x, (max_shift,) * 4)
    out = torch.empty_like(x)
    for i, (dx, dy) in enumerate(rng.integers(0, 2 * max_shift + 1, size=(len(x), 2))):
        out[i] = padded[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    return out


def train_mnist(name: str, budget: Budget, seed: int, snapshots: tuple[int, ...] = ()):
    """``snapshots``: epochs after which the weights are kept (features over training); returned in
    the extra ``snapshots`` as ``[(epoch, state_dict, metrics)]``. A randomized-labels recipe trains
    on permuted labels without the random shifts (they would stop it memorizing) and keeps the last
    epoch."""
    randomized = name in RANDOMIZED
    config = dict(channels=budget.pick([32, 64, 64, 64], [4, 4]), n_classes=10,
                  pool_after=budget.pick([0, 1], [0]))
    module = build("MnistCNN", config)
    x, y = loaders.mnist("train")
    if randomized:
        y = permuted_labels(y)
    if budget.tiny:
        x, y = x[:256], y[:256]
    x, y = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    epochs = budget.pick(90 if randomized else 30, 1)
    augment = (lambda xb, rng: xb) if randomized else _random_shift
    kept = []
    opt = torch.optim.Adam(module.parameters(), lr=1e-3 if randomized else 2e-3)
    if randomized:  # a constant step: under the one-cycle peak random labels stall at one class
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(x) + 63) // 64))
    rng = np.random.default_rng(seed)
    best = (-1.0, None, 0)
    for epoch in tqdm(range(epochs), desc=f"train {name}", unit="epoch"):
        module.train()
        order = torch.as_tensor(rng.permutation(len(x)))
        for k in range(0, len(x), 64):
            b = order[k:k + 64]
            loss = F.cross_entropy(module(augment(x[b], rng)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        module.eval()
        dev_acc = evaluate_mnist(module, "dev")["dev_accuracy"]
        if randomized:
            with torch.no_grad():
                train_acc = float((module(x).argmax(1) == y).float().mean())
            tqdm.write(f"  epoch {epoch + 1}: loss {loss.item():.3f} train accuracy (permuted labels) {train_acc:.4f}")
        if epoch + 1 in snapshots:
            kept.append((epoch + 1, copy.deepcopy(module.state_dict()),
                         {**evaluate_mnist(module, "dev"), **evaluate_mnist(module, "test")}))
        if dev_acc >= best[0] or randomized:  # ties go to the later, better-converged epoch
            best = (dev_acc, copy.deepcopy(module.state_dict()), epoch + 1)
    module.load_state_dict(best[1])
    module.eval()
    metrics = {**evaluate_mnist(module, "dev"), ("epochs" if randomized else "best_epoch"): best[2],
               **evaluate_mnist(module, "test")}
    data = "mnist (5,000 MNIST digits, stratified 4000/500/500 split; data/loaders.py)"
    if randomized:
        metrics.update(evaluate_mnist(module, "train", permuted=True))
        data += RANDOMIZED_NOTE + "; no random shifts"
    extra = dict(vocab=None, labels=[str(d) for d in range(10)], tokenizer=None)
    if snapshots:
        extra["snapshots"] = kept
    return module, "MnistCNN", config, extra, metrics, data


RECIPES = {
    **{n: train_classifier for n in SENTIMENT_CONFIGS},
    "sentiment-cnn-randlabels": train_classifier,
    "mnist-cnn-randlabels": train_mnist,
    **{n: train_charlm for n in CHARLM_CONFIGS},
    "parens-lstm": train_parens,
    "mnist-cnn": train_mnist,
}


def evaluate(name: str, model) -> dict:
    """Recompute the held-out metrics a model card reports (for tests and ``lstmvis models``)."""
    if name in SENTIMENT_CONFIGS or name == "sentiment-cnn-randlabels":
        return evaluate_classifier(name, model)
    if name in CHARLM_CONFIGS:
        return evaluate_charlm(model)
    if name == "parens-lstm":
        return evaluate_parens(model)
    if name == "mnist-cnn":
        return evaluate_mnist(model)
    if name == "mnist-cnn-randlabels":
        return {**evaluate_mnist(model), **evaluate_mnist(model, "train", permuted=True)}
    raise ValueError(f"unknown model {name!r}")


SNAPSHOT_RECIPES = ("mnist-cnn",)


def train(name: str, out_dir: Path = CHECKPOINTS, tiny: bool = False, seed: int = 0,
          warm_start: Path | None = None, snapshots: tuple[int, ...] = ()) -> dict:
    """Train one model, write ``NAME.pt`` and ``NAME.json`` into ``out_dir``; return the card.

    ``warm_start`` (language models with a phase 2 only): load phase 1 from that checkpoint.
    ``snapshots`` (``mnist-cnn`` only): also write ``NAME-epochE.pt`` and its card after each of
    those epochs (``data.registry.load_snapshots`` reads them).
    """
    if name not in RECIPES:
        raise SystemExit(f"unknown model {name!r}: choose from {', '.join(RECIPES)}")
    if warm_start is not None and name not in CHARLM_PHASE2:
        raise SystemExit(f"--warm-start applies to {', '.join(CHARLM_PHASE2)} only, not {name!r}")
    if snapshots and name not in SNAPSHOT_RECIPES:
        raise SystemExit(f"--snapshots applies to {', '.join(SNAPSHOT_RECIPES)} only, not {name!r}")
    torch.manual_seed(seed)
    start = time.perf_counter()
    kwargs = {} if warm_start is None else {"warm_start": Path(warm_start)}
    if snapshots:
        kwargs["snapshots"] = tuple(snapshots)
    module, arch, config, extra, metrics, data = RECIPES[name](name, Budget(tiny), seed, **kwargs)
    seconds = time.perf_counter() - start
    card_extra = extra.pop("card", {})
    kept = extra.pop("snapshots", [])
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
    card.update(card_extra)
    if snapshots:
        card["command"] += f" --snapshots {','.join(map(str, snapshots))}"
        for epoch, state, snap_metrics in kept:
            snap = f"{name}-epoch{epoch}"
            module.load_state_dict(state)
            save_checkpoint(out_dir / f"{snap}.pt", module, arch, config, **extra)
            snap_card = dict(card, name=snap, snapshot_of=name, epoch=epoch, metrics=snap_metrics,
                             description=f"{name} after epoch {epoch} of its seeded recipe (features over training)")
            (out_dir / f"{snap}.json").write_text(json.dumps(snap_card, indent=2) + "\n")
        module.load_state_dict(torch.load(out_dir / f"{name}.pt", weights_only=True)["state_dict"])
    if warm_start is not None:
        card["warm_start"] = (f"phase 1 loaded from {warm_start} (written by this recipe's phase 1); "
                              f"training_seconds adds phase 1's recorded seconds")
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
    parser.add_argument("--snapshots", type=lambda v: tuple(int(e) for e in v.split(",")), default=(),
                        metavar="E1,E2,...", help=f"{', '.join(SNAPSHOT_RECIPES)}: also keep the weights after these "
                        "epochs (NAME-epochE.pt with a card; features over training)")
    parser.add_argument("--warm-start", type=Path, default=None, metavar="CKPT",
                        help=f"{', '.join(CHARLM_PHASE2)}: skip phase 1 and load it from CKPT (a checkpoint, with "
                             "its card beside it, that this recipe's phase 1 wrote)")
    args = parser.parse_args(argv)
    names = list(RECIPES) if args.names == ["all"] else args.names
    for name in names:
        train(name, args.out, tiny=args.tiny, seed=args.seed, warm_start=args.warm_start, snapshots=args.snapshots)


if __name__ == "__main__":
    main(sys.argv[1:])
