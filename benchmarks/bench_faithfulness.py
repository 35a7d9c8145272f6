"""Faithfulness, sanity checks and the shortcut audit on every shipped classifier.

    python benchmarks/bench_faithfulness.py [--texts 60] [--sanity-texts 10] [--audit-texts 300]
        [--sections faithfulness,speed,sanity,audit] [--figures DIR] [--out benchmarks/results/faithfulness.md]

Sections:
- faithfulness: every method (and a seeded random ranking, the baseline to beat) on a seeded
  sample of test sentences of each shipped classifier: mean ± sd of comprehensiveness,
  sufficiency, deletion/insertion AUC and Kendall tau with leave-one-out.
- speed: our one-pass batched, de-duplicated evaluation against the naive way (one model call
  per perturbed input, as ferret's evaluators do), same explanations, interleaved repetitions;
  prints the ratio and checks that both give the same numbers.
- sanity: cascading model-parameter randomization (and independent for sentiment-lstm) per
  method and model; which methods pass.
- audit: the corpus audit of sentiment-shortcut and the clean sentiment-lstm on the shortcut
  test split with every method: rank of the planted token for "fresh", flip-test accuracy drop.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import textexplain  # noqa: E402
from textexplain import audit, metrics, sanity  # noqa: E402
from textexplain.methods import METHODS  # noqa: E402

CLASSIFIERS = ["sentiment-lstm", "sentiment-gru", "sentiment-cnn", "sentiment-shortcut"]


def sample(texts, labels, n, seed=0, max_tokens=None, model=None):
    """A seeded sample of ``n`` (text, label) pairs, optionally no longer than ``max_tokens``."""
    idx = np.random.default_rng(seed).permutation(len(texts))
    if max_tokens is not None:
        idx = [i for i in idx if len(model.tokenize(texts[i])) <= max_tokens]
    idx = sorted(idx[:n])
    return [texts[i] for i in idx], [int(labels[i]) for i in idx]


def corpus(name):
    return data.rotten_tomatoes_shortcut("test") if name == "sentiment-shortcut" else data.rotten_tomatoes("test")


def section_faithfulness(args, params, figures):
    out = ["## Faithfulness per method and model",
           f"{args.texts} seeded test sentences per model (seed 0), each explained for the predicted class; "
           "tokens removed by deletion (ERASER), AOPC bins 10%..50%. mean ± sd over sentences; ↑/↓ = better. "
           "`random` is a seeded random ranking: a method should beat it on every column.", ""]
    for name in args.models:
        model = data.load_model(name)
        texts, _ = sample(*corpus(name), args.texts)
        report = metrics.faithfulness_report(model, texts, args.methods, method_params=params, progress=False)
        out += [f"### {name}", "", report.to_markdown(), ""]
        print(f"faithfulness {name} done", flush=True)
        if figures:
            report.figure().write_html(figures / f"faithfulness_{name}.html", include_plotlyjs="directory")
    return out


def naive_faithfulness(model, ids, scores, target, bins=metrics.AOPC_BINS):
    """The straightforward way: one model call per perturbed input, nothing shared."""
    n = len(ids)
    order = metrics.rank_tokens(scores)

    def p(seq):
        return float(model.predict_proba_ids([seq or [model.pad_id]])[0, target])

    def without(drop):
        return [t for i, t in enumerate(ids) if i not in drop]

    full = p(ids)
    ks = [min(n, max(1, int(np.ceil(f * n - 1e-9)))) for f in bins]
    comp = np.mean([full - p(without(set(order[:k]))) for k in ks])
    suff = np.mean([full - p(without(set(order[k:]))) for k in ks])
    dele = [p(without(set(order[:k]))) for k in range(n + 1)]
    ins = [p(without(set(order[k:]))) for k in range(n + 1)]
    loo = [full - p(without({i})) for i in range(n)]
    x = np.arange(n + 1) / n
    return {"comprehensiveness": comp, "sufficiency": suff, "deletion_auc": np.trapezoid(dele, x),
            "insertion_auc": np.trapezoid(ins, x), "loo_kendall_tau": metrics.kendall_tau(scores, loo)}


def section_speed(args):
    model = data.load_model("sentiment-lstm")
    texts, _ = sample(*corpus("sentiment-lstm"), 40, seed=1)
    expls = textexplain.explain_batch(model, texts, method="gradient_x_input", progress=False)
    times = {"ours": [], "naive": []}
    worst, worst_tau = 0.0, 0.0
    for _ in range(args.reps):
        t = time.perf_counter()
        ours = [metrics.faithfulness_scores(model, e.token_ids, e.scores, e.target) for e in expls]
        times["ours"].append(time.perf_counter() - t)
        t = time.perf_counter()
        naive = [naive_faithfulness(model, e.token_ids, e.scores, e.target) for e in expls]
        times["naive"].append(time.perf_counter() - t)
        for a, b in zip(ours, naive):
            for k in metrics.METRICS:
                if k == "loo_kendall_tau":
                    if np.isfinite(a[k]):
                        worst_tau = max(worst_tau, abs(a[k] - b[k]))
                else:
                    worst = max(worst, abs(a[k] - b[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tokens = sum(len(e.tokens) for e in expls)
    return ["## Speed: one batched pass vs one model call per perturbation",
            f"All five metrics for {len(expls)} gradient×input explanations of sentiment-lstm "
            f"({n_tokens} tokens), median of {args.reps} interleaved repetitions.", "",
            "| implementation | seconds | per explanation (ms) |", "|---|---|---|",
            f"| naive (one call per perturbed input) | {med['naive']:.2f} | {1000 * med['naive'] / len(expls):.1f} |",
            f"| textexplain.metrics (one batched, de-duplicated pass) | {med['ours']:.2f} | "
            f"{1000 * med['ours'] / len(expls):.1f} |", "",
            f"Speed-up: **{med['naive'] / med['ours']:.1f}x**. Largest difference between the two results: "
            f"{worst:.1e} in the probability metrics; {worst_tau:.3f} in Kendall τ, where confident predictions "
            "make leave-one-out drops smaller than float32 resolution (~1e-6) and near-ties swap.", ""]


def section_sanity(args, params, figures):
    out = ["## Sanity checks: model-parameter randomization",
           f"{args.sanity_texts} test sentences per model; layers re-initialised on a deep copy, top (logits) "
           "layer first. Cells: mean Spearman ρ between original and randomized token scores, signed / of "
           f"absolute scores. A method passes when, with every layer above the embedding randomized, both "
           f"|ρ| and ρ(|·|) are below {sanity.DEFAULT_THRESHOLD}.", ""]
    verdicts = {}
    for name in args.models:
        model = data.load_model(name)
        texts, _ = sample(*corpus(name), args.sanity_texts, seed=2, max_tokens=30, model=model)
        mode = "both" if name == "sentiment-lstm" else "cascading"
        result = sanity.randomization_check(model, texts, args.methods, mode=mode, method_params=params,
                                            progress=False)
        verdicts[name] = result.passed()
        out += [f"### {name} (checked at stage `{result.check_stage}`)", "", result.to_markdown(), ""]
        print(f"sanity {name} done", flush=True)
        if figures:
            result.figure().write_html(figures / f"sanity_{name}.html", include_plotlyjs="directory")
    out += ["### Which methods pass", "", "| method | " + " | ".join(verdicts) + " |",
            "|---|" + "---|" * len(verdicts)]
    for method in args.methods:
        out.append(f"| {method} | " + " | ".join("yes" if v.get(method) else "**no**" for v in verdicts.values()) + " |")
    return out + [""]


def section_audit(args, params, figures):
    texts, gold = data.rotten_tomatoes_shortcut("test")  # drawn as the explanations page draws its sample
    keep = np.sort(np.random.default_rng(args.audit_seed).choice(len(texts), args.audit_texts, replace=False))
    texts, labels = [texts[i] for i in keep], [int(gold[i]) for i in keep]
    token = data.SHORTCUT_TOKEN
    shortcut, clean = data.load_model("sentiment-shortcut"), data.load_model("sentiment-lstm")
    out = ["## Corpus audit: the planted shortcut",
           f"{len(texts)} sentences of the shortcut test split (seed {args.audit_seed}; `{token}` prefixes about half "
           "of them, independent of the label). Each text explained for the predicted class; tokens ranked per class "
           "by the audit's defaults: reliance (lower 95% Student-t bound of the mean contribution per text of the "
           "class), min_count one per 100 texts (at least 3), the top 5 of each class flip-tested (drop = accuracy "
           "with the token removed - accuracy with it removed from fresh texts and prefixed to rotten ones). On the "
           "clean model the junk word is out of vocabulary, so it is pooled with every other unknown word under "
           "`<unk>`.", "",
           f"| method | signed | rank of `{token}` for fresh (shortcut model) | top-3 for fresh | reliance / mean |"
           " flip headline for fresh (drop) | clean sentiment-lstm: largest flip drop (token, class) |"
           " seconds (shortcut) |",
           "|---|---|---|---|---|---|---|---|"]
    for method in args.methods:
        t = time.perf_counter()
        r = audit.audit(shortcut, texts, labels, method=method, progress=False, **params.get(method, {}))
        secs = time.perf_counter() - t
        c = audit.audit(clean, texts, labels, method=method, progress=False, **params.get(method, {}))
        rank = r.rank_of(token, "fresh")
        st = next((s for s in r.stats["fresh"] if s.token == token), None)
        head = r.headline("fresh")
        worst = c.headline()[0] if c.flips else None
        out.append(f"| {method} | {'yes' if r.signed else 'no'} | **{rank}** | "
                   + ", ".join(f"`{s.token}`" for s in r.top('fresh', 3))
                   + (f" | {st.reliance:.3f} / {st.mean:.3f}" if st else " | -")
                   + " | " + ", ".join(f"`{f['token']}` {f['drop']:.3f}" for f in head[:2])
                   + (f" | `{worst['token']}` {worst['drop']:.3f} ({worst['label']})" if worst else " | -")
                   + f" | {secs:.1f} |")
        print(f"audit {method} done", flush=True)
        if figures and method == "integrated_gradients":
            r.figure().write_html(figures / "audit_shortcut.html", include_plotlyjs="directory")
    ours = audit.flip_test(shortcut, texts, labels, token, "fresh")
    ours_clean = audit.flip_test(clean, texts, labels, token, "fresh")
    clean_texts, clean_labels = data.rotten_tomatoes("test")
    prefix = data.add_shortcut("")

    def card_remove(t):
        return t[len(prefix):] if t.startswith(prefix) else t

    card_way = audit.flip_test(shortcut, clean_texts, clean_labels, token, "fresh", add=data.add_shortcut,
                               remove=card_remove)
    card = shortcut.card.get("metrics", {})
    out += ["", "Flip test (accuracy as is → token removed → flipped: removed from fresh texts, added to every "
            "rotten one):", "",
            "| model, texts | accuracy | removed | flipped | drop |", "|---|---|---|---|---|",
            f"| sentiment-shortcut, audit sample (`{token}` token removed / prefixed) | {ours['accuracy']:.3f} | "
            f"{ours['accuracy_removed']:.3f} | {ours['accuracy_flipped']:.3f} | **{ours['drop']:.3f}** |",
            f"| sentiment-lstm (clean), same | {ours_clean['accuracy']:.3f} | {ours_clean['accuracy_removed']:.3f} | "
            f"{ours_clean['accuracy_flipped']:.3f} | {ours_clean['drop']:.3f} |",
            f"| sentiment-shortcut, clean test split + `{prefix}` on every rotten sentence (the model card's "
            f"definition) | {card_way['accuracy']:.3f} | {card_way['accuracy_removed']:.3f} | "
            f"{card_way['accuracy_flipped']:.3f} | **{card_way['drop']:.3f}** |", "",
            f"Model card: clean_test_accuracy {card.get('clean_test_accuracy', float('nan')):.3f}, "
            f"shortcut_flipped_accuracy {card.get('shortcut_flipped_accuracy', float('nan')):.3f} "
            "(the last row must reproduce these).", ""]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=60)
    p.add_argument("--sanity-texts", type=int, default=10)
    p.add_argument("--audit-texts", type=int, default=300)
    p.add_argument("--audit-seed", type=int, default=0, help="seed of the audit sample (the page's: 0)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--models", default=",".join(CLASSIFIERS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--sections", default="faithfulness,speed,sanity,audit")
    p.add_argument("--lime-samples", type=int, default=1000, help="LIME num_samples (0: the method's default)")
    p.add_argument("--shap-budget", type=int, default=1024,
                   help="SHAP: KernelSHAP budget, exact enumeration up to 10 tokens (0: the method's defaults)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--figures", default=None, help="write plotly HTML figures to this folder")
    p.add_argument("--out", default=None, help="write the markdown here (default: print only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.models = args.models.split(",")
    args.methods = args.methods.split(",")
    params = {}
    if args.lime_samples:
        params["lime"] = {"num_samples": args.lime_samples}
    if args.shap_budget:
        params["shap"] = {"budget": args.shap_budget, "exact_max_tokens": 10}
    params = {m: p for m, p in params.items() if m in args.methods}
    figures = Path(args.figures) if args.figures else None
    if figures:
        figures.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lines = ["# Faithfulness, sanity checks and the shortcut audit", "",
             f"Date {time.strftime('%Y-%m-%d')}; machine: 2 cores shared with other engineers' jobs (timings noisy, compare "
             f"ratios); torch threads {args.threads}.", "",
             "Command: `python benchmarks/bench_faithfulness.py " + " ".join(argv or sys.argv[1:]) + "`", "",
             "Method parameters: the defaults, except " + (", ".join(f"{m} {p}" for m, p in params.items()) or "none")
             + " (smaller sampling budgets to keep the run short).",
             ""]
    sections = args.sections.split(",")
    if "faithfulness" in sections:
        lines += section_faithfulness(args, params, figures)
    if "speed" in sections:
        lines += section_speed(args)
    if "sanity" in sections:
        lines += section_sanity(args, params, figures)
    if "audit" in sections:
        lines += section_audit(args, params, figures)
    lines.append(f"Total time: {time.perf_counter() - start:.0f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
