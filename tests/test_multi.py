"""MultiEngine: B streams through one graph call give each stream what its own Engine gives (issue 14, part 1).

Streams with their own clips, queries and clocks join at different frames, one leaves and a new stream takes the
freed slot, one has a scene cut; every result is compared with a separate Engine fed the same frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from arr_coc_stream import Engine, EngineConfig, InputError, MultiEngine, synth
from arr_coc_stream.errors import ConfigError

OPTIONS = {"grid": (16, 16), "k": 48, "max_foveal": 6}


def _clips() -> dict[str, tuple[list[np.ndarray], str | None]]:
    red = synth.moving_object("red", n_frames=12, size=(128, 128), object_px=24, photo="chelsea").frames
    blue = synth.moving_object("blue", n_frames=12, size=(128, 128), object_px=24, photo="astronaut", seed=1).frames
    cut = red[:6] + [np.ascontiguousarray(f[::-1]) for f in blue[6:]]  # a cut at its frame 6
    text = synth.text_region(n_frames=12, size=(128, 128)).frames
    return {"red": (red, "red"), "blue": (blue, "blue"), "cut": (cut, None), "text": (text, "text")}


def _schedule() -> list[dict[str, int]]:
    """Per step: stream -> its frame number. 'blue' joins at step 2, 'red' leaves after step 5 and 'text' takes
    its slot at step 7; 'cut' skips step 4 (a stream left out keeps its state)."""
    steps = []
    for t in range(12):
        step = {}
        if t <= 5:
            step["red"] = t
        if t >= 2:
            step["blue"] = t - 2
        if t != 4:
            step["cut"] = t
        if t >= 7:
            step["text"] = t - 7
        steps.append(step)
    return steps


def _compare(multi: MultiEngine, make_single, tol: float) -> None:
    clips = _clips()
    singles: dict[str, Engine] = {}
    cuts: dict[str, list[int]] = {}
    for t, step in enumerate(_schedule()):
        if t == 6:
            multi.remove("red")
        for key in step:
            if key not in multi.keys:
                multi.add(key, query=clips[key][1])
                singles[key] = make_single(clips[key][1])
        frames = {key: (clips[key][0][n], n / 25) for key, n in step.items()}
        got = multi.process(frames)
        assert list(got) == list(step)
        for key, (frame, time) in frames.items():
            want = singles[key].process(frame, time)
            a = got[key]
            np.testing.assert_allclose(a.relevance, want.relevance, atol=tol, err_msg=f"{key} step {t}")
            assert set(a.selected.tolist()) == set(want.selected.tolist()), (key, t)
            assert a.cut == want.cut and a.reset == want.reset, (key, t)
            assert a.query_terms == want.query_terms
            if a.cut:
                cuts.setdefault(key, []).append(step[key])
    assert cuts == {"cut": [6]}
    assert multi.keys == ["cut", "blue", "text"] and multi.frames_processed("cut") == 11


def test_streams_in_one_call_match_separate_engines_torch() -> None:
    multi = MultiEngine(streams=3, **OPTIONS)
    _compare(multi, lambda q: Engine(query=q, **OPTIONS), 1e-5)


@pytest.mark.slow
def test_streams_in_one_call_match_separate_engines_onnxruntime(tmp_path: Path) -> None:
    from arr_coc_stream.export import export_onnx

    path = export_onnx(EngineConfig(**OPTIONS), tmp_path / "g.onnx", batch_max=4).path
    multi = MultiEngine(streams=3, backend="onnxruntime", model=path)
    _compare(multi, lambda q: Engine(query=q, backend="onnxruntime", model=path), 1e-5)
    with pytest.raises(ConfigError, match="batch_max"):
        MultiEngine(streams=5, backend="onnxruntime", model=path)


def test_slots_are_limited_and_a_bad_frame_changes_no_stream() -> None:
    multi = MultiEngine(streams=2, **OPTIONS)
    frame = np.zeros((64, 64, 3), np.uint8)
    multi.process({"a": (frame, 0.0), "b": (frame, 0.0)})
    with pytest.raises(ConfigError, match="slots"):
        multi.process({"c": frame})
    with pytest.raises(ConfigError, match="already present"):
        multi.add("a")
    before = {k: multi._slot(k).state["relevance"].clone() for k in multi.keys}
    with pytest.raises(InputError, match="time must be finite"):
        multi.process({"a": (frame, 0.04), "b": (frame, float("nan"))})
    assert multi.frames_processed("a") == multi.frames_processed("b") == 1
    assert all(np.array_equal(multi._slot(k).state["relevance"], v) for k, v in before.items())
    multi.remove("b")
    with pytest.raises(ConfigError, match="no stream"):
        multi.remove("b")
    assert multi.process({"c": frame})["c"].reset  # the freed slot starts fresh
    multi.set_query("a", "red")
    multi.reset("a")
    a = multi.process({"a": (frame, 0.08)})["a"]
    assert a.reset and a.query_terms == Engine(query="red", **OPTIONS).query.terms
    with pytest.raises(ConfigError, match="streams"):
        MultiEngine(streams=0)


def test_bench_streams_table_reports_per_stream_cost(tmp_path: Path) -> None:
    from arr_coc_stream.bench import streams_table

    clip = synth.write_clip(synth.moving_object("red", n_frames=8, size=(128, 128)), tmp_path / "ball.mp4")
    header, rows = streams_table(clip, 6, OPTIONS, counts=(1, 2), backends=("torch",))
    assert header[1] == "streams (B)" and [r[:2] for r in rows] == [["torch", 1], ["torch", 2]]
    for _, b, per_step, per_stream, _ in rows:
        assert float(per_step) > 0 and float(per_stream) == pytest.approx(float(per_step) / b, abs=0.011)
    assert rows[0][4] == "1.00"
