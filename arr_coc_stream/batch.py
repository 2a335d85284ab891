"""Many recorded videos: :func:`batch` runs each one whole through :func:`~arr_coc_stream.stream`, in this process
or as a Ray Data job, and writes a JSONL per video and a summary table.

A video is never split: the engine carries a temporal state from frame to frame (cuts, fixation, relevance
smoothing), so one call processes one video from its first frame to its last. That is why the Ray job is a dataset
of *paths* with one actor call per path, not ``ray.data.read_videos`` (which spreads one video's frames over
actors). A video that fails becomes a row with its error; the others finish.

    >>> from arr_coc_stream.batch import batch
    >>> rows = batch(["a.mp4", "b.mp4"], "out", query="red", k=64)  # doctest: +SKIP
    >>> rows = batch(paths, "out", ray_address="local")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import stream
from .config import EngineConfig
from .errors import ConfigError

SUMMARY_NAME = "summary.csv"  # not .jsonl: a video named summary.mp4 writes summary.jsonl beside it
# run()'s outputs that batch() names itself (one JSONL per video), or that cannot travel to a Ray actor (callbacks)
_RESERVED = ("jsonl", "overlay", "plot", "callbacks", "progress")
# run()'s options that are not EngineConfig fields
_STREAM_OPTIONS = ("backend", "model", "max_frames")
_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray's usage reporting would reach for the internet
    "RAY_AUTH_MODE": "disabled",
}  # token auth writes ~/.ray/auth_token for a cluster only we use
CPUS_PER_ACTOR = 0.5  # fractional: the actors leave a CPU to Ray Data's own tasks, so 2 CPUs do not deadlock


@dataclass(frozen=True)
class BatchRow:
    """One video's outcome.

    Attributes:
        path: the video as given.
        frames: frames processed and written (up to the failure, for a failed video).
        cuts: scene cuts detected.
        cells: mean selected cells per frame (0.0 without frames).
        seconds: wall time of the video's run, engine build and decoding included.
        output: the JSONL written (ending with an ``end`` record that says whether it is complete), or None when
            no frame was written.
        error: None on success; else ``"ErrorType: message"``, or ``"incomplete: why"`` when the source ended early
            (a truncated file: its frames before the damage are in the JSONL, but the video was not processed whole).
    """

    path: str
    frames: int
    cuts: int
    cells: float
    seconds: float
    output: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def batch(
    videos: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    query: str | None = None,
    ray_address: str | None = None,
    actors: int | None = None,
    progress: bool = True,
    **options: Any,
) -> list[BatchRow]:
    """Process every video whole, write ``<out_dir>/<stem>.jsonl`` per video and ``<out_dir>/summary.csv``.

    Args:
        videos: video files; their stems name the outputs, so two videos may not share a stem.
        out_dir: folder for the outputs (created).
        query: the text query of every video.
        ray_address: None: in this process, one video after another. ``"local"``: a Ray cluster started here
            on every CPU (and shut down after). Another string: the address of a running cluster
            (``"ray://head:10001"``, ``"auto"``), given to ``ray.init``; it must see ``out_dir`` and the videos
            at the same paths. An already initialised Ray is used as it is and left running.
        actors: Ray actors processing videos side by side (default: one per cluster CPU, at most one per video).
        progress: a progress bar over videos (in process; Ray shows its own).
        **options: :func:`~arr_coc_stream.run` options (``backend``, ``model``, ``max_frames``) and
            :class:`~arr_coc_stream.EngineConfig` fields (``k``, ``grid``...).

    Returns:
        One row per video, in the order of ``videos``; a failed video is a row with its error.

    Raises:
        ConfigError: no videos, two videos with one stem, ``out_dir`` a file, a bad option or ``actors`` < 1; raised
            before any output is opened. MissingExtraError: ``ray_address`` without Ray (the ``ray`` extra).
    """
    paths = [os.fspath(v) for v in videos]
    out = Path(out_dir)
    _check(paths, out, actors, options)
    out.mkdir(parents=True, exist_ok=True)
    if ray_address is None:
        from tqdm import tqdm

        rows = [
            process_video(p, out, query, options)
            for p in tqdm(paths, unit="video", disable=not progress, desc="arr-coc-stream batch")
        ]
    else:
        rows = _on_ray(paths, out, query, options, ray_address, actors)
    write_summary(rows, out / SUMMARY_NAME)
    return rows


def process_video(path: str, out_dir: Path, query: str | None, options: dict[str, Any]) -> BatchRow:
    """Run one whole video into ``<out_dir>/<stem>.jsonl``; any failure becomes the row's error, never a raise."""
    jsonl = out_dir / f"{Path(path).stem}.jsonl"
    start = time.perf_counter()
    frames = cuts = cells = 0
    try:
        # stream(), not run(): the same results, counted as they pass instead of all held for an hour-long video
        with stream(path, query, jsonl=jsonl, **options) as results:
            for r in results:
                frames, cuts, cells = frames + 1, cuts + int(r.cut), cells + int(r.valid.sum())
        error = None if results.complete else f"incomplete: {results.reason}"
    except Exception as e:  # one bad file must not end the batch: the error is the row
        error = f"{type(e).__name__}: {e}"
    # a frame counted was written first, so the JSONL is this run's; without one it may be a stale file or none
    return BatchRow(
        path,
        frames,
        cuts,
        cells / frames if frames else 0.0,
        time.perf_counter() - start,
        str(jsonl) if frames else None,
        error,
    )


def write_summary(rows: Sequence[BatchRow], path: Path) -> None:
    """Write the rows as CSV, one line per video (failed ones included), columns as :class:`BatchRow`."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in dataclasses.fields(BatchRow)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in rows)


def format_table(rows: Sequence[BatchRow]) -> str:
    """The rows as a Markdown table (the CLI prints it)."""
    lines = ["| video | frames | cuts | cells/frame | s | output | error |", "|---|--:|--:|--:|--:|---|---|"]
    for r in rows:
        error = (r.error or "").replace("|", "\\|").replace("\n", " ")  # one table row per video, whatever the text
        lines.append(
            f"| {r.path} | {r.frames} | {r.cuts} | {r.cells:.1f} | {r.seconds:.1f} | {r.output or ''} | {error} |"
        )
    return "\n".join(lines)


def _check(paths: list[str], out: Path, actors: int | None, options: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for what would fail every video or overwrite an output, before anything opens."""
    if not paths:
        raise ConfigError("no videos given")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {os.fspath(out)!r} is a file, not a folder")
    stems: dict[str, int] = {}
    for i, p in enumerate(paths):
        first = stems.setdefault(Path(p).stem, i)
        if first != i:  # the same stem, or the same video twice: the second JSONL would replace the first
            raise ConfigError(
                f"{paths[first]!r} and {p!r} would both write {Path(p).stem}.jsonl; give each video its own file name"
            )
    reserved = sorted(set(options) & set(_RESERVED))
    if reserved:
        raise ConfigError(f"batch writes <out_dir>/<stem>.jsonl itself and takes no {reserved}")
    if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
        raise ConfigError(f"actors must be an int >= 1 or None, got {actors!r}")
    if options.get("backend", "torch") == "torch":  # a model file's configuration is checked when it is opened
        EngineConfig.from_options(**{k: v for k, v in options.items() if k not in _STREAM_OPTIONS})


class _Worker:
    """Ray Data's callable class: a video per call (``batch_size=1``), returned as one JSON-encoded row.

    It holds only the options: the engine is built per video by :func:`stream`, as a video's state must start fresh.
    """

    def __init__(self, out_dir: str, query: str | None, options: dict[str, Any]) -> None:
        self.out_dir, self.query, self.options = Path(out_dir), query, options

    def __call__(self, block: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = [process_video(str(p), self.out_dir, self.query, self.options) for p in block["path"]]
        # JSON text, not columns: a column mixing None and str (error, output) is not a clean Arrow type
        return {"index": block["index"], "row": np.array([json.dumps(dataclasses.asdict(r)) for r in rows])}


def _on_ray(
    paths: list[str], out: Path, query: str | None, options: dict[str, Any], address: str, actors: int | None
) -> list[BatchRow]:
    """The Ray Data job: a dataset of paths, one block and one actor call per path, rows put back in input order."""
    try:
        import ray
        import ray.data  # plain `pip install ray` lacks Ray Data's pandas and pyarrow
    except ImportError as e:
        from .errors import MissingExtraError

        raise MissingExtraError("batch on Ray (ray_address=...)", "ray") from e
    with _ray_session(ray, address):
        size = min(len(paths), actors or max(1, int(ray.cluster_resources().get("CPU", 1))))
        items = [{"index": i, "path": os.path.abspath(p)} for i, p in enumerate(paths)]
        # a block per path: a block is retried or dropped as a whole, so it must never hold two videos
        ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=len(paths))
        ds = ds.map_batches(
            _Worker,
            fn_constructor_kwargs={"out_dir": os.path.abspath(out), "query": query, "options": options},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=CPUS_PER_ACTOR,
        )
        done = {int(r["index"]): BatchRow(**json.loads(r["row"])) for r in ds.take_all()}
    # the rows name the files as the caller gave them, not as the absolute paths the actors saw
    return [
        dataclasses.replace(done[i], path=p, output=(o := done[i].output) and str(out / Path(o).name))
        for i, p in enumerate(paths)
    ]


@contextlib.contextmanager
def _ray_session(ray: Any, address: str) -> Iterator[None]:
    """Ray initialised for the job (local: every CPU, no dashboard), shut down after if this started it; the
    environment variables it needs are set for the job only (the library leaves no global state behind)."""
    if ray.is_initialized():
        yield
        return
    saved = {k: os.environ.get(k) for k in _RAY_ENV}
    for k, v in _RAY_ENV.items():
        os.environ.setdefault(k, v)  # a user's own choice wins
    try:
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        else:
            ray.init(address=address)
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        for k, before in saved.items():
            if before is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = before
