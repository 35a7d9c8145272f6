"""Data randomization sanity check (Adebayo et al. 2018): explanations of the shipped models against
the same architectures trained on permuted labels (sentiment-cnn-randlabels, mnist-cnn-randlabels).

    python benchmarks/bench_data_randomization.py --texts 24 --images 32

Prints the randomized models' train accuracy on their permuted labels and test accuracy, and one
markdown table per modality: Spearman rank correlation (signed, of absolute scores) per method.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import data
from data.train import RANDOMIZED
from textexplain import image as img
from textexplain.sanity import data_randomization_check

TEXT_METHODS = ["gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "occlusion"]
IMAGE_METHODS = ["gradient", "gradient_x_input", "smoothgrad", "guided_backprop", "deconvnet", "integrated_gradients",
                 "occlusion", "gradcam"]


def stratified(labels: np.ndarray, n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    per_class = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    out = []
    while len(out) < n:
        for idx in per_class:
            if idx and len(out) < n:
                out.append(int(idx.pop()))
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=24)
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}\n")
    print("| randomized model | train accuracy (permuted labels) | test accuracy | chance |\n|---|---|---|---|")
    for name in RANDOMIZED:
        if name in data.MODELS:
            m = data.model_card(name)["metrics"]
            chance = 0.5 if "sentiment" in name else 0.1
            print(f"| {name} | {m['train_accuracy_permuted_labels']:.3f} | {m['test_accuracy']:.3f} | {chance} |")
    start = time.perf_counter()
    texts, labels = data.rotten_tomatoes("test")
    pick = stratified(np.asarray(labels), args.texts)
    result = data_randomization_check(data.load_model("sentiment-cnn"), data.load_model("sentiment-cnn-randlabels"),
                                      [texts[i] for i in pick], TEXT_METHODS, progress=False)
    print(f"\n{result.to_markdown()}\n\n({len(pick)} test sentences, both classes; {time.perf_counter() - start:.0f} s)")
    if "mnist-cnn-randlabels" in data.MODELS:
        start = time.perf_counter()
        x, y = data.mnist("test")
        pick = stratified(y, args.images)
        res = img.DataRandomization(data.load_model("mnist-cnn"), data.load_model("mnist-cnn-randlabels"),
                                    IMAGE_METHODS, progress=False).run(torch.from_numpy(x[pick])[:, None])
        print(f"\n**data randomization** (mnist-cnn vs mnist-cnn-randlabels; {len(pick)} test digits, every class)\n")
        print(res.to_markdown(2))
        print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
