"""Public API surface, import hygiene, configuration errors, the console script and the README's examples."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import arr_coc_stream as acs
from arr_coc_stream import synth

ROOT = Path(__file__).resolve().parents[1]


def test_public_names_snapshot() -> None:
    # other code builds on these names: changing them is a deliberate, visible decision
    assert sorted(acs.__all__) == sorted(
        [
            "ArrCocError",
            "CHANNELS",
            "ConfigError",
            "Engine",
            "EngineConfig",
            "FrameResult",
            "InputError",
            "InputTypeError",
            "MissingExtraError",
            "ModelError",
            "MultiEngine",
            "OutputError",
            "QueryError",
            "QueryWarning",
            "SourceError",
            "SourceWarning",
            "__version__",
            "export_onnx",
            "read_jsonl",
            "run",
            "stream",
        ]
    )
    for name in acs.__all__:
        assert hasattr(acs, name), name


def test_import_changes_no_global_state() -> None:
    code = (
        "import logging, warnings, torch\n"
        "filters, handlers, threads = list(warnings.filters), list(logging.getLogger().handlers), "
        "torch.get_num_threads()\n"
        "import arr_coc_stream, arr_coc_stream.bench, arr_coc_stream.cli, arr_coc_stream.synth\n"
        "assert list(warnings.filters) == filters, 'warning filters changed'\n"
        "assert list(logging.getLogger().handlers) == handlers, 'logging handlers changed'\n"
        "assert torch.get_num_threads() == threads, 'torch thread count changed'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize(
    "options,phrase",
    [
        ({"grid": (3, 3)}, "grid"),
        ({"cell_px": 6}, "cell_px"),
        ({"k": 0}, "k must be"),
        ({"relevance_floor": 1.5}, "relevance_floor"),
        ({"explore_share": 1.0}, "explore_share"),
        ({"max_total_budget": 10}, "max_total_budget"),
        ({"input_mode": "fast"}, "input_mode"),
        ({"input_mode": "full"}, "frame_size"),
        ({"query_encoder": "clip"}, "query_encoder"),
        ({"params": {"nope": 1.0}}, "unknown params"),
        ({"params": {"query_share": 2.0}}, "query_share"),
    ],
)
def test_config_errors_name_the_option(options: dict, phrase: str) -> None:
    with pytest.raises(acs.ConfigError, match=phrase):
        acs.EngineConfig(**options)


def test_full_input_mode_matches_work_mode_on_the_same_frames() -> None:
    clip = synth.moving_object("red", n_frames=4, size=(360, 640))
    work = acs.run(clip.frames, query="red")
    full = acs.run(clip.frames, query="red", input_mode="full", frame_size=(360, 640))
    for a, b in zip(work, full):
        # the graph's area matrices and OpenCV's INTER_AREA are the same filter up to rounding to uint8
        assert abs(a.relevance - b.relevance).mean() < 0.02
        assert len(set(a.selected.tolist()) & set(b.selected.tolist())) >= 0.9 * len(a.selected)


@pytest.mark.slow
def test_cli_run_writes_jsonl_and_summarises(tmp_path: Path) -> None:
    clip = synth.write_clip(synth.moving_object("red", n_frames=12), tmp_path / "ball.mp4")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "arr_coc_stream.cli",
            "run",
            str(clip),
            "--query",
            "red ball",
            "--jsonl",
            str(out),
            "--k",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "12 frames" in proc.stdout and "['red']" in proc.stdout
    lines = out.read_text().splitlines()
    assert len(lines) == 14 and json.loads(lines[0])["query_ignored"] == ["ball"]
    assert json.loads(lines[-1]) == {"type": "end", "frames": 12, "complete": True, "reason": None}
    assert "frame/s" in proc.stderr or "frame" in proc.stderr  # the progress bar went to stderr


def test_cli_reports_bad_input_with_exit_code_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "arr_coc_stream.cli", "run", str(tmp_path / "missing.mp4")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "missing.mp4" in proc.stderr and "Traceback" not in proc.stderr


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at import time or inside functions; not for type checking only).

    Importing a module of a subpackage from outside it runs the subpackage's ``__init__`` first: that counts as an
    import of the ``__init__`` too.
    """
    package = ROOT / "arr_coc_stream"
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        package_of = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package_of.split(".")[: len(package_of.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        edges = set()
        for target in targets:
            if not target.startswith("arr_coc_stream."):
                continue  # the root package (arr_coc_stream/__init__) imports everything by design
            target = known(target)
            edges.add(target)
            parent = target.rpartition(".")[0]
            while parent != "arr_coc_stream" and not (name + ".").startswith(parent + "."):
                edges.add(parent)
                parent = parent.rpartition(".")[0]
        graph[name] = edges - {name}
    return graph


def test_no_import_cycle_and_the_runtime_never_imports_the_exporter() -> None:
    graph = _import_graph()
    assert {"arr_coc_stream.sources.base", "arr_coc_stream.query.base", "arr_coc_stream.engine"} <= set(graph)
    cycles, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
    # what runs a model never loads the code that makes one (onnx, onnxscript, the TensorRT builder)
    tools = {"arr_coc_stream.export", "arr_coc_stream.trt_build", "arr_coc_stream.trt_compat"}
    entry_points = {"arr_coc_stream", "arr_coc_stream.cli", "arr_coc_stream.bench"} | tools
    for module in sorted(set(graph) - entry_points):
        seen, todo = set(), [module]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        assert not seen & tools, f"{module} imports {sorted(seen & tools)}"


def test_cli_version_and_export_scripts_help() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "arr_coc_stream.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert version.returncode == 0 and version.stdout.strip() == f"arr-coc-stream {acs.__version__}"
    for script, flag in (("export_onnx.py", "--frame-size"), ("build_trt.py", "--workspace-mib")):
        out = subprocess.run(
            [sys.executable, str(ROOT / "export" / script), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT / "models",
        )
        assert out.returncode == 0 and f"usage: {script}" in out.stdout and flag in out.stdout, out.stderr
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'version = {attr = "arr_coc_stream._version.__version__"}' in pyproject, "one version string"


@pytest.mark.slow
def test_bench_speed_table_has_the_decode_baseline_and_ratio(tmp_path: Path) -> None:
    from arr_coc_stream.bench import backends_table

    clip = synth.write_clip(synth.moving_object("red", n_frames=16), tmp_path / "ball.mp4")
    header, rows = backends_table(clip, 10, {}, ["torch"])
    table = {row[0].strip(): row[1] for row in rows}
    assert header == ["ms per frame", "torch"]
    decode, e2e, ratio = (
        float(table[k])
        for k in ("fps decode only (PyAV, resized by the decoder)", "fps end to end", "ratio end-to-end / decode-only")
    )
    assert decode > 0 and e2e > 0 and ratio == pytest.approx(e2e / decode, abs=0.01)
    assert {"texture", "attending", "realizing.pre"} <= set(table)
