"""A compact copy of a dataset (short side = size, JPEG) in the Kaggle layout, e.g. to carry to a GPU machine."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from pneumo.data.decode import load_image
from pneumo.data.manifest import DatasetSource, resolve_root
from pneumo.errors import DataError


def export_compact(df: pd.DataFrame, root: str | os.PathLike | None, out: Path, *, size: int = 224,
                   quality: int = 90) -> Path:
    """Write every manifest image with its short side reduced to ``size`` (aspect kept, never upscaled) + manifest.csv.

    The manifest keeps ``source_kind`` and the content hashes of the source files in ``source_sha256``.
    """
    if out.exists():
        raise DataError(f"{out} exists: choose a new folder")
    source = DatasetSource(resolve_root(root))
    tmp = out.with_name(out.name + ".partial")
    for rel in tqdm(df["path"], desc=f"export {size}px", unit="img"):
        gray = Image.fromarray(load_image(source.read(rel), target=size))
        w, h = gray.size
        scale = size / min(w, h)
        if scale < 1:
            gray = gray.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        gray.save(buf, "JPEG", quality=quality, optimize=True)
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buf.getvalue())
    df.rename(columns={"sha256": "source_sha256"}).to_csv(tmp / "manifest.csv", index=False)
    os.replace(tmp, out)
    return out
