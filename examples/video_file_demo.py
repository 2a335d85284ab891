"""Run the engine on a video file and write what a person looks at: JSONL, overlay video, timeline plot, crops.

Writes ``<name>.jsonl``, ``<name>_overlay.mp4``, ``<name>_timeline.png`` and, for the frame with the largest
foveal budget, each crop at its level of detail as ``<name>_crop_<frame>_<k>.png`` into the output folder.

Run:
    python examples/video_file_demo.py                       # the embedded default clip and its query
    python examples/video_file_demo.py video.mp4 --query "where is the red car?" --out out/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

import arr_coc_stream as acs
from arr_coc_stream.sources import VideoFileSource
from arr_coc_stream.synth import default_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?", help="video file (default: the embedded default clip)")
    parser.add_argument("--query", "-q", help="text query (default: the default clip's query, else none)")
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    args = parser.parse_args()

    video, query = args.video, args.query
    if video is None:
        path, default_query = default_clip()
        video, query = str(path), query or default_query
    out = Path(args.out)
    name = Path(video).stem
    paths = {
        "jsonl": out / f"{name}.jsonl",
        "overlay": out / f"{name}_overlay.mp4",
        "plot": out / f"{name}_timeline.png",
    }
    results = acs.run(video, query, max_frames=args.max_frames, progress=True, **paths)
    cuts = [r.index for r in results if r.cut]
    print(f"{len(results)} frames, cuts at {cuts}, query terms {list(results[0].query_terms)}")
    for what, path in paths.items():
        print(f"  {what:8s} {path}")

    # Crops need the full-resolution frame: decode the chosen one again.
    best = max(results, key=lambda r: r.total_budget)
    with VideoFileSource(video) as src:
        frame = next(f for f in src if f.index == best.index)
    for k, crop in enumerate(best.crops(frame)):
        path = out / f"{name}_crop_{best.index}_{k}.png"
        cv2.imwrite(str(path), cv2.cvtColor(crop.image, cv2.COLOR_RGB2BGR))
        print(
            f"  crop     {path}: cell {crop.cell}, {crop.budget} tokens, LOD {crop.lod}, box {crop.box}, "
            f"{crop.image.shape[1]}x{crop.image.shape[0]} px"
        )


if __name__ == "__main__":
    main()
