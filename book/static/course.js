// A figure in a cell's output that the page shows smaller than it was drawn becomes a link to its full-size
// image, so that the small print of wide figures (a grid of nine attention heads) stays readable.
document.addEventListener("DOMContentLoaded", () => {
  for (const img of document.querySelectorAll(".cell_output img")) {
    if (img.closest("a")) continue;
    const link = document.createElement("a");
    link.href = img.src;
    link.className = "course-full-size";
    link.title = "open the figure at full size";
    img.replaceWith(link);
    link.appendChild(img);
  }
});
