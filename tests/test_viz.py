"""The plot helpers draw what they are given and reject input they cannot draw."""

import matplotlib

matplotlib.use("Agg")  # headless: no window is opened

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.patches import Circle

from llama_from_scratch import Llama, LlamaConfig
from llama_from_scratch.course.viz import architecture_diagram, attention_grid, attention_heatmap, stacked_barh


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_heatmap_shows_the_weights_and_hides_the_future():
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(4, 4), -1)
    fig, ax = plt.subplots()
    image = attention_heatmap(ax, weights, labels=["a", "b", "c", "d"])
    shown = image.get_array()
    assert np.ma.getmaskarray(shown).tolist() == np.triu(np.ones((4, 4), bool), k=1).tolist()
    assert np.allclose(shown[1, :2], weights[1, :2].numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]


def test_heatmap_of_cached_queries_sees_the_whole_past():
    # Two new queries at positions 3 and 4 of five: the first may see keys 0..3.
    fig, ax = plt.subplots()
    image = attention_heatmap(ax, torch.full((2, 5), 0.2))
    assert np.ma.getmaskarray(image.get_array()).tolist() == [[False] * 4 + [True], [False] * 5]


def test_grid_has_one_heatmap_per_head_of_a_real_model():
    torch.manual_seed(0)
    model = Llama.from_preset("tiny").eval()
    with torch.no_grad():
        attention = model.attention_maps(torch.tensor([[1, 2, 3, 4, 5]]))
    weights = attention[0][0]  # layer 0, first sequence: (n_heads, seq, seq)
    fig = attention_grid(weights, labels=list("abcde"), ncols=3, title="layer 0")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == model.config.n_heads
    for head, image in enumerate(images):
        assert np.allclose(image.get_array().filled(0.0), weights[head].numpy())
    assert fig.axes[len(images)].axison is False  # the unused sixth cell of the 2 x 3 grid is blank


def test_grid_can_pick_heads():
    torch.manual_seed(0)
    fig = attention_grid(torch.rand(6, 3, 3), heads=[5, 0], gamma=0.5)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == ["head 5", "head 0"]


@pytest.mark.parametrize(
    ("weights", "kwargs", "message"),
    [
        (torch.rand(3, 3), {}, "3 dimensions, got shape \\(3, 3\\)"),
        (torch.rand(2, 3, 3), {"heads": [2]}, "heads \\[2\\] do not exist"),
        (torch.rand(2, 3, 3), {"labels": ["a", "b"]}, "2 labels for 3 positions"),
        (torch.rand(2, 3, 3), {"heads": []}, "heads is empty"),
    ],
)
def test_grid_rejects_bad_input(weights, kwargs, message):
    with pytest.raises(ValueError, match=message):
        attention_grid(weights, **kwargs)


def test_stacked_bars_are_shares_of_each_row():
    fig, ax = plt.subplots()
    parts = stacked_barh(ax, {"x": {"a": 1, "b": 3}, "y": {"a": 2, "b": 2}})
    assert parts == ["a", "b"]
    widths = [patch.get_width() for patch in ax.patches]
    assert np.allclose(widths, [25, 50, 75, 50])  # part a of x, of y; then part b of x, of y
    with pytest.raises(ValueError, match="row 'y' has parts"):
        stacked_barh(ax, {"x": {"a": 1, "b": 3}, "y": {"b": 2, "a": 2}})


def test_architecture_diagram_labels_every_part_with_the_configs_shapes():
    # Numbers that occur nowhere else in the picture, so that each one is found where it belongs: grouped-query
    # attention (6 query heads, 2 key/value heads of 16), a feed-forward width of 200, tied embeddings.
    config = LlamaConfig(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=321, hidden_dim=200,
                         tie_embeddings=True)
    fig = architecture_diagram(config)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]

    def one(fragment):
        found = [t for t in texts if fragment in t]
        assert len(found) == 1, f"{fragment!r} in {found} (all texts: {texts})"
        return found[0]

    # bottom to top: ids, embedding, the block's two norms and sub-layers, the final norm, the head
    assert one("tok_embeddings").startswith("tok_embeddings: a 321 x 96 table")
    attention = one("Attention")
    assert "6 query heads, 2 key/value heads of 16" in attention
    assert "wq 96->96" in attention and "wk and wv 96->32" in attention and "wo 96->96" in attention
    assert "w1, w3 96->200, w2 200->96" in one("SwiGLU")
    for norm in ("attention_norm: RMSNorm", "ffn_norm: RMSNorm", "norm: RMSNorm"):
        assert norm in texts
    assert one("output head") == "output head 96->321 (tied to the embedding)"
    assert "x 3 layers" in one("TransformerBlock")
    # the shapes: ids, the residual stream after the embedding, each sub-layer's addition and the final norm; logits
    assert texts.count("(batch, seq) integers") == 1
    assert texts.count("(batch, seq, 96)") == 4
    assert texts.count("(batch, seq, 321) logits") == 1
    # the residual stream: two "+" circles, one after attention and one after the feed-forward network
    assert texts.count("+") == 2 and texts.count("residual") == 2
    assert sum(isinstance(p, Circle) for p in ax.patches) == 2
    # the title and an untied head
    assert ax.get_title() == "The LLaMA architecture, with the shapes of this config"
    untied = architecture_diagram(config.replace(tie_embeddings=False), title="mine")
    untied_texts = [t.get_text() for t in untied.axes[0].texts]
    assert "output head 96->321" in untied_texts and untied.axes[0].get_title() == "mine"
