"""Shared pytest set-up: seeded torch, small thread count, and shipped-model fixtures."""
import pytest
import torch

torch.set_num_threads(1)  # tests run many tiny ops: threads only add overhead


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


class _BagOfWeights(torch.nn.Module):
    """Analytic classifier: logit(class 1) - logit(class 0) = sum of one weight per token."""

    def __init__(self, weights):
        super().__init__()
        self.emb = torch.nn.Embedding(len(weights), 1, padding_idx=0)
        with torch.no_grad():
            self.emb.weight.copy_(torch.tensor(weights, dtype=torch.float32)[:, None])

    def forward(self, ids):
        s = self.emb(ids).sum(dim=(1, 2))
        return torch.stack([-s / 2, s / 2], dim=1)


@pytest.fixture
def bag_model():
    """Factory: ``bag_model({"good": 2.0, "bad": -1.5, ...})`` -> TextModel whose p(class 1) is
    sigmoid(sum of the weights of its tokens); pad and unk weigh 0. Exact token ranking known."""
    from textexplain import TextModel

    def make(weights: dict[str, float], labels=("neg", "pos")) -> TextModel:
        tokens = ["<pad>", "<unk>", *weights]
        module = _BagOfWeights([0.0, 0.0, *weights.values()])
        return TextModel(module.eval(), tokens, list(labels), embedding=module.emb, name="bag-of-weights")

    return make


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("single_thread")``),
    restored afterwards: tiny models gain nothing from intra-op threads, and on a loaded machine two
    threads that wait for each other at every op make small-batch model calls many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def browser():
    """One headless Debian Chromium for every browser test (playwright, never `playwright install`)."""
    from playwright.sync_api import sync_playwright

    from conftest_server import CHROMIUM, CHROMIUM_ARGS
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def watched(browser):
    """A fresh page of the shared Chromium that records console errors, failed requests and HTTP errors
    (conftest_server.Watched), with the browser tests' default timeout; closed afterwards."""
    from conftest_server import TIMEOUT_MS, Watched

    w = Watched(browser)
    w.page.set_default_timeout(TIMEOUT_MS)
    yield w
    w.close()


@pytest.fixture()
def page(watched):
    """The watched page itself, for tests that need only the page."""
    return watched.page
