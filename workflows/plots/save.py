"""The one way a figure is written: ``save(fig, path_png)`` writes the PNG and the PDF beside it.

Each file is written atomically (``workflows.io.atomic_path``: a temporary file, then a rename), at ``DPI``,
with fixed metadata (``METADATA``: no creation date in the PDF, no software version in the PNG), so the bytes
depend on the drawing only and the same figure rendered twice gives the same files.
"""
from __future__ import annotations

from pathlib import Path

from workflows.io import atomic_path
from workflows.plots.registry import FORMATS
from workflows.plots.style import plt

DPI = 150
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None}}


def save(fig, path_png, tight: bool = True) -> list[Path]:
    """Write ``fig`` as ``path_png`` and the same path with ``.pdf``; close it; return the paths.
    ``tight``: crop to the drawn content (``bbox_inches="tight"``); False keeps the figure's own size."""
    paths = []
    for fmt in FORMATS:
        path = Path(path_png).with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight" if tight else None, metadata=METADATA[fmt])
        paths.append(path)
    plt.close(fig)
    return paths
