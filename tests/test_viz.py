"""The plot helpers draw what they are given and reject input they cannot draw."""

import matplotlib

matplotlib.use("Agg")  # headless: no window is opened

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from llama_from_scratch import Llama
from llama_from_scratch.course.viz import attention_grid, attention_heatmap, stacked_barh


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_heatmap_shows_the_weights_and_hides_the_future():
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
