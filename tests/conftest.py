"""Shared pytest set-up: seeded torch, small thread count, and shipped-model fixtures."""
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sentiment_lstm():
    import data

    return data.load_model("sentiment-lstm")


@pytest.fixture(scope="session")
def mnist_cnn():
    import data

    return data.load_model("mnist-cnn")
