"""Picture of retrieval results: each row is a query followed by its top-ranked gallery images.

Matches (same label as the query) are framed green, mistakes red, so a glance shows where a
model fails (e.g. a neighbouring building ranked first) in a way the averaged metrics cannot.
"""
import io
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageOps

from datasets.folders import load_rgb
from utils.errors import UserError
from utils.files import atomic_write_bytes

TILE = 128  # pixels per image, frame included
GAP = 6  # pixels between tiles and around the grid
FRAME = 4
MATCH, MISTAKE, QUERY = (0, 170, 0), (210, 0, 0), (60, 60, 60)


def grid_size(rows: int, columns: int, tile: int = TILE) -> tuple:
    """(width, height) in pixels of a grid of ``rows`` x ``columns`` tiles."""
    return columns * (tile + GAP) + GAP, rows * (tile + GAP) + GAP


def top_gallery(query_features: torch.Tensor, gallery_features: torch.Tensor, gallery_labels: torch.Tensor,
                top: int) -> torch.Tensor:
    """(Q, top) gallery indices in the evaluation's order: descending score, ties in gallery order,
    junk (label -1) left out."""
    scores = (query_features @ gallery_features.T).masked_fill_(gallery_labels[None] == -1, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :min(top, int((gallery_labels != -1).sum()))]


def _tile(path: str, label: int, colour, tile: int) -> Image.Image:
    image = ImageOps.fit(load_rgb(path), (tile - 2 * FRAME, tile - 2 * FRAME))
    framed = ImageOps.expand(image, border=FRAME, fill=colour)
    draw = ImageDraw.Draw(framed)
    text = str(label)
    box = draw.textbbox((FRAME, FRAME), text)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((FRAME, FRAME), text, fill=(255, 255, 255))
    return framed


def save_retrieval_grid(path, query_paths: Sequence[str], query_labels: torch.Tensor, query_features: torch.Tensor,
                        gallery_paths: Sequence[str], gallery_labels: torch.Tensor, gallery_features: torch.Tensor,
                        num_queries: int, top: int = 10, tile: int = TILE) -> Path:
    """Write a PNG of ``num_queries`` queries, spread evenly over the query set, each followed by
    its ``top`` gallery images; every tile is captioned with its class label. Returns the path."""
    chosen = torch.linspace(0, len(query_paths) - 1, min(num_queries, len(query_paths))).round().long().unique()
    ranked = top_gallery(query_features[chosen], gallery_features, gallery_labels, top)
    canvas = Image.new("RGB", grid_size(len(chosen), 1 + ranked.shape[1], tile), (255, 255, 255))
    for row, (query, gallery_row) in enumerate(zip(chosen.tolist(), ranked.tolist())):
        y = GAP + row * (tile + GAP)
        label = int(query_labels[query])
        canvas.paste(_tile(query_paths[query], label, QUERY, tile), (GAP, y))
        for column, index in enumerate(gallery_row, start=1):
            found = int(gallery_labels[index])
            colour = MATCH if found == label else MISTAKE
            canvas.paste(_tile(gallery_paths[index], found, colour, tile), (GAP + column * (tile + GAP), y))
    path, picture = Path(path), io.BytesIO()
    canvas.save(picture, format="PNG")
    try:
        atomic_write_bytes(path, picture.getvalue())
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror or err}); the previous file is intact") from None
    return path
