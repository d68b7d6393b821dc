"""Section anchors made the way JupyterLab makes them, so that one link works in JupyterLab and in the book.

JupyterLab gives a heading the id of its text with every space replaced by "-": `## 6. Where the parameters are`
is `#6.-Where-the-parameters-are`, and the notebooks link to each other's sections that way. MyST computes the
book's anchors with `heading_id` (`myst_heading_slug_func` in _config.yml), so those links resolve there too.
"""


def heading_id(title: str) -> str:
    """The anchor of a heading whose text is `title`, as JupyterLab's `createHeaderId` writes it."""
    return title.replace(" ", "-")


def setup(app):
    """Loaded as a local Sphinx extension only so that MyST can import `heading_id`; it registers nothing."""
    return {"parallel_read_safe": True, "parallel_write_safe": True}
