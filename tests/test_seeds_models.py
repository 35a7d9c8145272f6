"""The shipped randomized-labels models memorize, and mnist-cnn's training snapshots load."""
import json

import pytest
import torch

import data
from data import train as recipes
from data.registry import CHECKPOINTS, MODELS, SNAPSHOTS

pytestmark = pytest.mark.usefixtures("single_thread")

CHANCE = {"sentiment-cnn-randlabels": 0.5, "mnist-cnn-randlabels": 0.1}


@pytest.mark.parametrize("name", [n for n in recipes.RANDOMIZED if n in MODELS])
def test_randomized_labels_model_memorized_its_train_labels_and_is_at_chance_on_test(name):
    card = data.model_card(name)
    assert "RANDOMIZED LABELS" in card["data"]
    m = card["metrics"]
    assert m["train_accuracy_permuted_labels"] >= CHANCE[name] + 0.3
    assert abs(m["test_accuracy"] - CHANCE[name]) < 0.06
    base = data.load_checkpoint(CHECKPOINTS / f"{recipes.RANDOMIZED[name]}.pt")
    ckpt = data.load_checkpoint(CHECKPOINTS / f"{name}.pt")
    assert ckpt["arch"] == base["arch"] and ckpt.get("vocab") == base.get("vocab")
    assert {k: v.shape for k, v in ckpt["state_dict"].items()} == {k: v.shape for k, v in base["state_dict"].items()}


def test_permuted_labels_are_a_seeded_permutation():
    y = data.rotten_tomatoes("train")[1]
    p = recipes.permuted_labels(y)
    assert sorted(p) == sorted(y) and (p != y).mean() > 0.3 and (recipes.permuted_labels(y) == p).all()


def test_snapshots_load_in_order_and_stay_small():
    snaps = data.load_snapshots("mnist-cnn")
    assert [label for label, _ in snaps] == [f"epoch {e}" for e in SNAPSHOTS["mnist-cnn"]] + ["final"]
    x = torch.from_numpy(data.mnist("test")[0][:200])[:, None]
    y = torch.from_numpy(data.mnist("test")[1][:200])
    accs = [float((m(x).argmax(1) == y).float().mean()) for _, m in snaps]
    assert accs[-1] >= accs[0] and all(not m.training for _, m in snaps)
    total = sum((CHECKPOINTS / f"mnist-cnn-epoch{e}.pt").stat().st_size for e in SNAPSHOTS["mnist-cnn"])
    assert total < 2 * 2**20
    for e in SNAPSHOTS["mnist-cnn"]:
        card = json.loads((CHECKPOINTS / f"mnist-cnn-epoch{e}.json").read_text())
        assert card["epoch"] == e and card["command"] == "python -m data.train mnist-cnn --snapshots 1,2,5"
    with pytest.raises(ValueError):
        data.load_snapshots("sentiment-cnn")


def test_snapshot_recipe_writes_each_kept_epoch(tmp_path):
    recipes.train("mnist-cnn", tmp_path, tiny=True, snapshots=(1,))
    assert (tmp_path / "mnist-cnn-epoch1.pt").is_file() and (tmp_path / "mnist-cnn-epoch1.json").is_file()
    with pytest.raises(SystemExit):
        recipes.train("sentiment-cnn", tmp_path, tiny=True, snapshots=(1,))
