import numpy as np
import pytest
import torch
from torch import nn

from textexplain import TextModel, Vocab, WordTokenizer
from textexplain import model as te_model


class BagOfEmbeddings(nn.Module):
    def __init__(self, n, c=2):
        super().__init__()
        self.emb = nn.Embedding(n, c)

    def forward(self, ids):
        return (self.emb(ids) * (ids != 0).unsqueeze(-1)).sum(1)


def make_model():
    vocab = Vocab(["<pad>", "<unk>", "good", "bad", "film"])
    module = BagOfEmbeddings(len(vocab))
    with torch.no_grad():
        module.emb.weight.copy_(torch.tensor([[0, 0], [0, 0], [0, 2.0], [2.0, 0], [0.5, 0.5]]))
    return TextModel(module.eval(), vocab, ["neg", "pos"], embedding=module.emb, tokenizer=WordTokenizer())


def test_batch_equals_single_calls_on_a_shipped_model(sentiment_lstm):
    texts = ["a gorgeous, witty film", "a bore", "it is not good at all, and far too long to sit through"]
    batch = sentiment_lstm.predict_proba(texts)
    singles = np.concatenate([sentiment_lstm.predict_proba(t) for t in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    np.testing.assert_allclose(batch.sum(1), 1, atol=1e-6)


def test_unknown_words_map_to_unk():
    m = make_model()
    assert m.encode("good zzzqqq film") == [2, 1, 4]
    probs = m.predict_proba(["good", "bad film"])
    assert probs[0, 1] > 0.8 and probs[1, 0] > 0.8


def test_empty_text_is_a_clear_error():
    m = make_model()
    for text in ["", "   \n\t"]:
        with pytest.raises(ValueError, match="no tokens"):
            m.predict_proba([text])


def test_target_resolution_and_errors():
    m = make_model()
    assert m.label_index("pos") == 1 and m.label_index(0) == 0
    assert m.label_index(None, np.array([0.2, 0.8])) == 1
    with pytest.raises(ValueError, match="unknown target"):
        m.label_index("neutral")
    with pytest.raises(ValueError, match="out of range"):
        m.label_index(5)


def test_vocab_size_must_match_embedding():
    module = BagOfEmbeddings(3)
    with pytest.raises(ValueError, match="rows"):
        TextModel(module.eval(), ["<pad>", "<unk>", "a", "b"], ["x", "y"], embedding=module.emb)


def test_word_tokenizer_spans_cover_the_tokens():
    tok = WordTokenizer()
    text = "It's a <script>alert(1)</script> film!"
    assert [text[a:b].lower() for a, b in tok.spans(text)] == tok(text)
    assert tok("Don't stop") == ["don't", "stop"]


def test_float64_copy_is_fresh_and_leaves_the_model_alone(sentiment_lstm):
    texts = ["a gorgeous, witty film", "a bore"]
    twin = sentiment_lstm.float64()
    assert twin.dtype == torch.float64 and sentiment_lstm.dtype == torch.float32
    assert twin.embedding is twin.module.emb and twin.module is not sentiment_lstm.module
    assert twin.vocab is sentiment_lstm.vocab and twin.labels == sentiment_lstm.labels
    np.testing.assert_allclose(twin.predict_proba(texts), sentiment_lstm.predict_proba(texts), atol=1e-6)
    assert sentiment_lstm.float64() is not twin  # made anew: never stale
    assert twin.float64() is twin


def test_float64_copy_follows_every_kind_of_change():
    model = make_model()
    with torch.no_grad():
        model.module.emb.weight[2, 0] += 1.0  # in place
    np.testing.assert_allclose(model.float64().predict_proba("good film"), model.predict_proba("good film"), atol=1e-7)
    model.module.emb.weight.data[3, 1] = 5.0  # through .data: no version bump
    np.testing.assert_allclose(model.float64().predict_proba("bad film"), model.predict_proba("bad film"), atol=1e-7)
    model.labels = ["minus", "plus"]
    assert model.float64().labels == ["minus", "plus"]


def test_float64_copy_leaves_out_hooks_held_by_running_calls():
    """A copy taken while another call substitutes the embeddings or records states must not inherit
    that call's temporary hooks (they would fire forever in the copy); the user's own hooks stay."""
    from textexplain.base import substituted_embeddings

    from lstmvis.capture import Recorder

    model = make_model()
    seen = []
    model.module.emb.register_forward_hook(lambda m, i, o: seen.append(o.shape))  # the user's own
    with substituted_embeddings(model, torch.zeros(1, 2, 2)):
        twin = model.float64()
    assert len(twin.module.emb._forward_hooks) == 1
    np.testing.assert_allclose(twin.predict_proba("good bad film"), model.predict_proba("good bad film"), atol=1e-7)
    assert len(seen) == 2  # the user's hook fired in the copy and in the model
    lstm = nn.LSTM(2, 3, batch_first=True)
    with Recorder(lstm):
        copied, _ = te_model._copy_without_transients(lstm)
    assert "forward" not in copied.__dict__ and "forward" not in lstm.__dict__
    copied(torch.zeros(1, 4, 2))


def test_float64_copy_of_a_module_that_cannot_be_copied_is_a_clear_error():
    import threading

    model = make_model()
    model.module.lock = threading.Lock()  # not deep-copyable
    with pytest.raises(TypeError, match="deepcopy of the module"):
        model.float64()
    assert model.dtype == torch.float32
