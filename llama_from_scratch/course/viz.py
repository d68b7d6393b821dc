"""Pictures for the notebooks: attention heatmaps and stacked bar charts.

Attention weights are easiest to read as a heatmap: one row per *query*
(the token that looks), one column per *key* (the token looked at), the
colour the weight ``softmax(q . k / sqrt(head_dim))``. Each row sums to 1.
In causal attention a query may not look ahead, so everything right of the
diagonal is zero; the heatmaps here leave those cells blank instead of
painting them as "weight 0", so that what the model *could not* see is not
confused with what it *chose not* to look at.

Trained models often pile most of a row's weight onto one token (very often
the first one, an "attention sink"); a linear colour scale then shows one
bright column and nothing else. ``gamma=0.5`` colours by the square root of
the weight, which keeps small weights visible without changing the order.

Only matplotlib is needed; functions take tensors or arrays and return the
matplotlib objects they drew, so a notebook can adjust them further.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage


def _as_array(x, name: str, ndim: int) -> np.ndarray:
    """A float numpy array from a tensor or array, with ``ndim`` dimensions (else ValueError naming ``name``)."""
    if hasattr(x, "detach"):  # a torch.Tensor, possibly on a GPU or needing grad
        x = x.detach().float().cpu().numpy()
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(array.shape)}")
    return array


def _check_labels(labels: Sequence[str] | None, size: int, what: str) -> None:
    if labels is not None and len(labels) != size:
        raise ValueError(f"{what}: {len(labels)} labels for {size} positions")


def attention_heatmap(
    ax: Axes,
    weights,
    labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    title: str | None = None,
    hide_future: bool = True,
    gamma: float = 1.0,
    vmax: float = 1.0,
    cmap: str = "viridis",
) -> AxesImage:
    """Draw one head's attention weights ``(seq, kv_seq)`` on ``ax``: row = query, column = key.

    ``labels`` name the queries (the tokens as text); ``key_labels`` the keys
    (default: ``labels`` when ``seq == kv_seq``). The ``seq`` queries are
    taken to be the *last* ``seq`` of the ``kv_seq`` positions (as with a KV
    cache), and with ``hide_future`` the keys after each query are left
    blank. ``gamma < 1`` brightens small weights (see the module docstring).
    Returns the image, e.g. for ``fig.colorbar``.
    """
    w = _as_array(weights, "weights", 2)
    seq, kv_seq = w.shape
    if seq > kv_seq:
        raise ValueError(f"weights of shape {w.shape}: more queries ({seq}) than keys ({kv_seq})")
    if key_labels is None and labels is not None and seq == kv_seq:
        key_labels = labels
    _check_labels(labels, seq, "labels (queries)")
    _check_labels(key_labels, kv_seq, "key_labels")
    if hide_future:
        query_pos = np.arange(kv_seq - seq, kv_seq)[:, None]
        w = np.ma.masked_where(np.arange(kv_seq)[None, :] > query_pos, w)
    palette = plt.get_cmap(cmap).with_extremes(bad="white")  # white: the hidden future
    norm = colors.PowerNorm(gamma, vmin=0.0, vmax=vmax) if gamma != 1.0 else colors.Normalize(0.0, vmax)
    image = ax.imshow(w, cmap=palette, norm=norm, interpolation="nearest", aspect="equal")
    if labels is not None:
        ax.set_yticks(range(seq), labels, fontsize=8)
    else:
        ax.set_ylabel("query position")
    if key_labels is not None:
        ax.set_xticks(range(kv_seq), key_labels, fontsize=8, rotation=90)
    else:
        ax.set_xlabel("key position")
    if title is not None:
        ax.set_title(title, fontsize=10)
    return image


def attention_grid(
    weights,
    labels: Sequence[str] | None = None,
    heads: Sequence[int] | None = None,
    ncols: int | None = None,
    title: str | None = None,
    head_titles: Sequence[str] | None = None,
    gamma: float = 1.0,
    cell_inches: float = 2.8,
) -> Figure:
    """A figure with one heatmap per head: ``weights`` is ``(n_heads, seq, kv_seq)``.

    That is one layer of :meth:`Llama.attention_maps`
    output for one sequence, e.g. ``attention[layer][0]``. ``heads`` picks
    which heads to show (default: all); ``labels`` name the tokens and are
    written on the left column and bottom row only. All heads share one
    colour scale, 0 to 1, with a colour bar.
    """
    w = _as_array(weights, "weights (n_heads, seq, kv_seq)", 3)
    n_heads, seq, _ = w.shape
    heads = list(range(n_heads)) if heads is None else list(heads)
    if not heads:
        raise ValueError("heads is empty: nothing to draw")
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise ValueError(f"heads {bad} do not exist: weights has {n_heads} heads (0..{n_heads - 1})")
    if head_titles is not None and len(head_titles) != len(heads):
        raise ValueError(f"{len(head_titles)} head_titles for {len(heads)} heads")
    _check_labels(labels, seq, "labels")
    ncols = ncols or min(len(heads), 5)
    nrows = math.ceil(len(heads) / ncols)
    # Token labels need room; the width grows a little with them.
    label_room = 1.0 if labels is not None else 0.4
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * cell_inches + label_room + 0.8, nrows * cell_inches + label_room),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= len(heads):
            ax.axis("off")
            continue
        col = i % ncols
        head_title = head_titles[i] if head_titles is not None else f"head {heads[i]}"
        image = attention_heatmap(ax, w[heads[i]], labels, title=head_title, gamma=gamma)
        if col > 0:  # token names on the left column only
            ax.set_yticks([])
            ax.set_ylabel("")
        if i + ncols < len(heads):  # ... and on the lowest heatmap of each column
            ax.set_xticks([])
            ax.set_xlabel("")
    colour_label = "attention weight" + (f" (colour ∝ weight^{gamma:g})" if gamma != 1.0 else "")
    fig.colorbar(image, ax=axes, shrink=0.8, label=colour_label)
    if title is not None:
        fig.suptitle(title)
    return fig


def stacked_barh(
    ax: Axes,
    rows: Mapping[str, Mapping[str, float]],
    colours: Sequence[str] | None = None,
    as_percent: bool = True,
    min_label: float = 6.0,
) -> list[str]:
    """Horizontal stacked bars: one bar per row name, one segment per part.

    ``rows`` maps a bar's name to ``{part: value}``; every row must have the
    same parts, in the same order. With ``as_percent`` each bar is scaled to
    100 (shares, e.g. of a model's parameters); segments at least
    ``min_label`` wide are labelled with their value. Returns the part names,
    in the order of the legend.
    """
    if not rows:
        raise ValueError("rows is empty: nothing to draw")
    names = list(rows)
    parts = list(rows[names[0]])
    for name in names:
        if list(rows[name]) != parts:
            raise ValueError(f"row {name!r} has parts {list(rows[name])}, expected {parts} like row {names[0]!r}")
    values = np.array([[float(rows[name][part]) for part in parts] for name in names])
    if (values < 0).any():
        raise ValueError("stacked_barh: values must not be negative")
    if as_percent:
        values = 100 * values / values.sum(axis=1, keepdims=True)
    colours = colours or [f"C{i}" for i in range(len(parts))]
    if len(colours) < len(parts):
        raise ValueError(f"{len(colours)} colours for {len(parts)} parts")
    left = np.zeros(len(names))
    for j, part in enumerate(parts):
        ax.barh(names, values[:, j], left=left, color=colours[j], label=part)
        for row, (x, width) in enumerate(zip(left, values[:, j])):
            if width >= min_label:
                text = f"{width:.0f}%" if as_percent else f"{width:g}"
                ax.text(x + width / 2, row, text, ha="center", va="center", color="white", fontsize=9)
        left += values[:, j]
    ax.invert_yaxis()  # the first row at the top, as in a table
    if as_percent:
        ax.set_xlim(0, 100)
    return parts


def architecture_diagram(config, title: str | None = None) -> Figure:
    """The LLaMA block diagram for ``config`` (a :class:`~llama_from_scratch.LlamaConfig`), with every shape.

    Bottom to top, as the data flows: token ids, the embedding lookup, one pre-norm block (drawn once,
    framed, with ``x n_layers``) whose two sub-layers each add their result to the residual stream (the
    ``+`` circles), the final norm and the output head. Shapes name the config's numbers, so the same
    picture reads for every size: ``(batch, seq, dim)`` with ``dim`` filled in. Returns the figure.
    """
    c = config
    q_width, kv_width = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    attention = (
        f"Attention: {c.n_heads} query heads, {c.n_kv_heads} key/value heads of {c.head_dim}\n"
        f"wq {c.dim}->{q_width}, wk and wv {c.dim}->{kv_width}, RoPE, causal softmax, wo {q_width}->{c.dim}"
    )
    feed_forward = f"SwiGLU feed-forward: w2(silu(w1 x) * w3 x)\nw1, w3 {c.dim}->{c.hidden_dim}, w2 {c.hidden_dim}->{c.dim}"
    output = f"output head {c.dim}->{c.vocab_size}" + (" (tied to the embedding)" if c.tie_embeddings else "")
    # (label, shape after it, colour, y): bottom to top
    boxes = [
        ("token ids", "(batch, seq) integers", "#eeeeee", 0.0),
        (f"tok_embeddings: a {c.vocab_size} x {c.dim} table", f"(batch, seq, {c.dim})", "#d8e7f5", 1.0),
        ("attention_norm: RMSNorm", None, "#fde9c9", 2.2),
        (attention, None, "#cfe8d5", 3.1),
        ("ffn_norm: RMSNorm", None, "#fde9c9", 4.6),
        (feed_forward, None, "#f3d6d6", 5.5),
        ("norm: RMSNorm", f"(batch, seq, {c.dim})", "#fde9c9", 7.0),
        (output, f"(batch, seq, {c.vocab_size}) logits", "#d8e7f5", 8.0),
    ]
    fig, ax = plt.subplots(figsize=(10, 8.6))
    ax.set_xlim(0, 10.5)
    ax.set_ylim(-0.6, 8.8)
    ax.axis("off")
    x0, width, height = 1.2, 6.2, 0.62
    for label, shape, colour, y in boxes:
        tall = height * (1.45 if "\n" in label else 1.0)
        ax.add_patch(plt.Rectangle((x0, y - tall / 2), width, tall, facecolor=colour, edgecolor="#555555"))
        ax.text(x0 + width / 2, y, label, ha="center", va="center", fontsize=8.5)
        if shape:
            ax.text(x0 + width + 0.25, y, shape, ha="left", va="center", fontsize=9, family="monospace")
    arrow = {"arrowstyle": "->", "color": "#333333", "lw": 1.2}
    centre = x0 + width / 2
    for y_from, y_to in [(0.31, 0.69), (1.31, 1.89), (2.51, 2.65), (3.55, 3.83), (4.91, 5.05), (5.95, 6.25), (6.69, 6.69)]:
        ax.annotate("", (centre, y_to), (centre, y_from), arrowprops=arrow)
    # the two residual additions: the stream skips each sub-layer and the sub-layer's result is added back
    for y_skip_from, y_plus in [(1.75, 3.98), (4.25, 6.4)]:
        ax.add_patch(plt.Circle((centre, y_plus), 0.17, facecolor="white", edgecolor="#333333"))
        ax.text(centre, y_plus, "+", ha="center", va="center", fontsize=12)
        left = x0 - 0.45
        ax.plot([centre, left, left, centre - 0.17], [y_skip_from, y_skip_from, y_plus, y_plus], color="#333333", lw=1.2)
        ax.text(left - 0.1, (y_skip_from + y_plus) / 2, "residual", rotation=90, ha="right", va="center", fontsize=8)
    ax.annotate("", (centre, 4.25), (centre, 4.15), arrowprops=arrow)
    ax.annotate("", (centre, 6.69), (centre, 6.57), arrowprops=arrow)
    ax.text(x0 + width + 0.25, 3.98, f"(batch, seq, {c.dim})", ha="left", va="center", fontsize=9, family="monospace")
    ax.text(x0 + width + 0.25, 6.4, f"(batch, seq, {c.dim})", ha="left", va="center", fontsize=9, family="monospace")
    # the block frame
    ax.add_patch(
        plt.Rectangle((x0 - 0.8, 1.7), width + 1.05, 4.95, fill=False, edgecolor="#1f4e79", lw=1.5, ls="--")
    )
    ax.text(x0 + width + 0.35, 2.0, f"TransformerBlock\nx {c.n_layers} layers", ha="left", va="bottom", fontsize=10,
            color="#1f4e79", weight="bold")
    ax.set_title(title or "The LLaMA architecture, with the shapes of this config")
    return fig
