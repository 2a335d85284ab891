"""The per-frame graph as a whole: its named contract (GraphSpec), query heads as plug-ins, the channel table's
readers, batching and explicit state.

A third query head, defined here and registered at run time, runs through torch and onnxruntime without a change
to the package: the proof that heads are plug-ins.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, jaccard

import arr_coc_stream as acs
from arr_coc_stream import attending, knowing, realizing, synth
from arr_coc_stream.balancing import balance, cluster_onehot
from arr_coc_stream.channels import CHANNELS, READERS
from arr_coc_stream.graph import FrameGraph
from arr_coc_stream.query import AttributesHead, EncodedQuery, QueryHead, QueryScorer, register_head, unregister_head
from arr_coc_stream.query.attributes import gaussian_match
from arr_coc_stream.spec import GraphSpec, StateSpec, TensorSpec
from arr_coc_stream.texture import cluster_channels, grid_positions, luminance, motion_channel, texture

# ---------------------------------------------------------------------------------------------------------------
# a third query head, defined outside the package


class BandScorer(QueryScorer):
    """The match is the query's own map; the head counts the frames it has seen in a state of its own."""

    def forward(self, tex, rgb, inputs, prepared):
        band = inputs["query_map"]
        return band, (band.flatten(1).amax(dim=1) > 0).to(band.dtype)

    def next_state(self, inputs, prepared, dt, motion):
        return {"frames_seen": inputs["frames_seen_in"] + 1.0}


class BandHead(QueryHead):
    """Queries like "rows 4-10": a constant map, 1 on those grid rows, 0 elsewhere."""

    name = "band"

    def encode(self, text: str | None) -> EncodedQuery:
        band = np.zeros(self.config.grid, np.float32)
        if text is not None:
            lo, hi = map(int, re.fullmatch(r"rows (\d+)-(\d+)", text).groups())
            band[lo:hi] = 1.0
        return EncodedQuery(text, {"query_map": band}, () if text is None else (text,))

    def query_inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("query_map", self.config.grid, "float32", "1 on the queried rows"),)

    def states(self) -> tuple[StateSpec, ...]:
        return (StateSpec("frames_seen", (1,), "float32", "frames since the engine started"),)

    def scorer(self) -> BandScorer:
        return BandScorer()


@pytest.fixture()
def band_head():
    register_head(BandHead)
    yield BandHead
    unregister_head(BandHead.name)


def _band_run(clip: synth.Clip, **options) -> tuple[list[acs.FrameResult], acs.Engine]:
    engine = acs.Engine(query="rows 4-10", **options)
    return [engine.process(f, i / clip.fps) for i, f in enumerate(clip.frames)], engine


def _check_band(results: list[acs.FrameResult], engine: acs.Engine) -> None:
    for r in results:
        rows = r.selected // r.grid[1]
        # the knowing stage lends 0.6 of a cell's match to its neighbours: rows 3 and 10 border the band
        assert ((rows >= 3) & (rows <= 10)).mean() > 0.9, f"frame {r.index}: selection outside the queried band"
        # the query lifts the band towards 1 and tempers the rest towards the relevance floor
        assert r.relevance[4:10].mean() > 1.5 * r.relevance[14:].mean(), f"frame {r.index}"
    assert float(engine.state["frames_seen"][0]) == len(results), "the head's own state is carried"


def test_a_head_defined_outside_the_package_runs_in_torch(band_head) -> None:
    clip = synth.pan(n_frames=6, photo="coffee")
    results, engine = _band_run(clip, query_encoder="band")
    assert engine.spec.input_names[3] == "query_map" and "frames_seen_in" in engine.spec.input_names
    assert results[0].query_terms == ("rows 4-10",)
    _check_band(results, engine)
    with pytest.raises(acs.ConfigError, match="unsupported query_encoder 'nope'"):
        acs.EngineConfig(query_encoder="nope")


@pytest.mark.slow
def test_a_head_defined_outside_the_package_runs_in_onnxruntime(band_head, tmp_path: Path) -> None:
    clip = synth.pan(n_frames=6, photo="coffee")
    exported = acs.export_onnx(acs.EngineConfig(query_encoder="band"), tmp_path / "band.onnx")
    assert exported.metadata["head"] == {"name": "band"} and exported.tensorrt.ok
    want, _ = _band_run(clip, query_encoder="band")
    got, engine = _band_run(clip, backend="onnxruntime", model=exported.path)  # the file names its head
    _check_band(got, engine)
    for a, b in zip(want, got):
        np.testing.assert_allclose(b.relevance, a.relevance, atol=1e-4)
        assert jaccard(a.selected, b.selected) >= 0.98


def test_no_module_outside_query_branches_on_the_head() -> None:
    """Heads are known by name only to the registry: no comparison of query_encoder, no head class, no head
    module imported elsewhere. bench.py is exempt: its CLIP table benchmarks the clip head by design."""
    package = ROOT / "arr_coc_stream"
    pattern = re.compile(
        r"query_encoder\s*(==|!=)|query_encoder\s+in\s+[(\[{]|uses_clip|ClipHead|AttributesHead|"
        r"query\.clip|query\.attributes|clip_model\."
    )
    offenders = []
    for path in package.rglob("*.py"):
        if path.parent.name == "query" or path.name == "bench.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ---------------------------------------------------------------------------------------------------------------
# the contract


def test_spec_names_every_input_state_and_output_once() -> None:
    spec = FrameGraph(acs.EngineConfig(), AttributesHead()).spec
    assert spec.input_names == (
        "frame",
        "dt",
        "reset",
        "query_weights",
        "query_targets",
        "query_colour",
        "luma_in",
        "relevance_in",
        "saliency_in",
        "fixation_in",
        "cut_feat_in",
        "cut_luma_in",
        "cut_motion_in",
        "cut_mean_in",
        "since_reset_in",
    )
    assert spec.output_names[:10] == (
        "relevance",
        "indices",
        "scores",
        "valid",
        "budgets",
        "lod",
        "boxes",
        "scene_score",
        "cut",
        "motion",
    )
    assert GraphSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(acs.ModelError, match="more than once"):
        GraphSpec(inputs=(TensorSpec("x_in", (1,), "float32"),), states=(StateSpec("x", (1,), "float32"),))
    with pytest.raises(acs.ModelError, match="a per-stream scalar is"):
        StateSpec("count", (), "float32")  # Triton cannot declare an implicit state without dims
    assert all(t.shape for t in (*spec.inputs, *spec.states, *spec.outputs)), "every tensor is at least [B, 1]"
    assert spec.inputs[2].name == "reset" and spec.inputs[2].shape == (1,), "Triton's START control is [B, 1]"
    with pytest.raises(acs.ModelError, match="needs the inputs"):
        spec.ordered({"frame": torch.zeros(1)})
    assert spec.differences(spec) == []
    other = FrameGraph(acs.EngineConfig(k=64), AttributesHead()).spec
    assert any(d.startswith("indices: int64[200] vs int64[64]") for d in spec.differences(other))


def test_outputs_match_the_spec_and_a_rerun_has_no_side_effects() -> None:
    config = acs.EngineConfig()
    head = AttributesHead()
    graph = FrameGraph(config, head).eval()
    spec = graph.spec
    frames = synth.pan(n_frames=2, photo="coffee").frames
    state = spec.initial_state(1)
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            x = {
                "frame": torch.from_numpy(frame)[None],
                "dt": torch.tensor([[0.04]]),
                "reset": torch.tensor([[i == 0]]),
                **head.stack([head.encode("red")]),
                **{s.in_name: state[s.name] for s in spec.states},
            }
            out = spec.named(graph(*spec.ordered(x)))
            again = spec.named(graph(*spec.ordered(x)))
            for t in spec.output_specs():
                assert out[t.name].shape == (1, *t.shape) and out[t.name].dtype == t.torch_dtype, t.name
                torch.testing.assert_close(again[t.name], out[t.name], rtol=0, atol=0, msg=t.name)
            state = {s.name: out[s.out_name] for s in spec.states}


def test_two_streams_in_one_batch_match_each_alone() -> None:
    config = acs.EngineConfig()
    head = AttributesHead()
    graph = FrameGraph(config, head).eval()
    spec = graph.spec
    clips = [synth.moving_object("red", n_frames=6), synth.pan(n_frames=6, photo="coffee")]
    queries = [head.encode(q) for q in ("red", "text")]

    def run(frames: list[torch.Tensor], qs: list, batch: int) -> list[dict[str, torch.Tensor]]:
        state, outs = spec.initial_state(batch), []
        for i, frame in enumerate(frames):
            x = {
                "frame": frame,
                "dt": torch.full((batch, 1), 0.04),
                "reset": torch.full((batch, 1), i == 0),
                **head.stack(qs),
                **{s.in_name: state[s.name] for s in spec.states},
            }
            out = spec.named(graph(*spec.ordered(x)))
            state = {s.name: out[s.out_name] for s in spec.states}
            outs.append(out)
        return outs

    with torch.inference_mode():
        frames = [[torch.from_numpy(f)[None] for f in c.frames] for c in clips]
        alone = [run(frames[i], [queries[i]], 1) for i in range(2)]
        both = run([torch.cat([a, b]) for a, b in zip(*frames)], queries, 2)
    for step, out in enumerate(both):
        for i in range(2):
            for name, got in out.items():
                torch.testing.assert_close(
                    got[i : i + 1],
                    alone[i][step][name],
                    atol=1e-5,
                    rtol=1e-5,
                    msg=f"step {step} stream {i} output {name}",
                )


def test_warped_cache_matches_the_current_relevance_better_than_unwarped() -> None:
    clip = synth.shifted(n_frames=3, shift=(0, 8))
    config = acs.EngineConfig()
    head = AttributesHead()
    graph = FrameGraph(config, head).eval()
    spec = graph.spec

    def step(frame: np.ndarray, state: dict[str, torch.Tensor], reset: bool) -> dict[str, torch.Tensor]:
        x = {
            "frame": torch.from_numpy(frame)[None],
            "dt": torch.tensor([[0.04]]),
            "reset": torch.tensor([[reset]]),
            **head.stack([head.encode(None)]),
            **{s.in_name: state[s.name] for s in spec.states},
        }
        out = spec.named(graph(*spec.ordered(x)))
        return {s.name: out[s.out_name] for s in spec.states}

    with torch.inference_mode():
        s1 = step(clip.frames[1], step(clip.frames[0], spec.initial_state(), True), False)
        now = step(clip.frames[2], spec.initial_state(), True)["relevance"]  # R_now of frame 2, no history
        small = [
            torch.nn.functional.avg_pool2d(luminance(_tensor(f)), realizing.FLOW_DOWNSCALE) for f in clip.frames[1:]
        ]
        flow = realizing.coarse_flow(small[1], small[0], config.grid, config.flow_radius)
        warped, valid = realizing.backward_warp(s1["relevance"][:, None], flow)
    inside = valid[0, 0].bool()
    err_warped = (warped[0, 0] - now[0])[inside].abs().mean()
    err_still = (s1["relevance"][0] - now[0])[inside].abs().mean()
    assert err_warped < 0.75 * err_still, (float(err_warped), float(err_still))


# ---------------------------------------------------------------------------------------------------------------
# the channel table's readers


def _texture() -> torch.Tensor:
    """A texture of a real photograph in motion, with random caches and head channels: no channel constant."""
    frames = synth.pan(n_frames=2, photo="coffee", shift=(0, 4)).frames
    rgb, prev = (_tensor(f) for f in frames[::-1])
    luma = luminance(rgb)
    gen = torch.Generator().manual_seed(0)
    motion = motion_channel(luma, luminance(prev), torch.tensor([False]), 8)
    caches = torch.rand(1, 3, 32, 32, generator=gen)
    head = torch.rand(1, 16, 32, 32, generator=gen) * 2 - 1
    pos, ecc = grid_positions((32, 32))
    return texture(rgb, luma, motion, caches, pos, ecc, cell_px=8, clusters=6, head_channels=head)


def _readers() -> dict[str, object]:
    """Each reader stage as a function of the texture alone (its other inputs fixed)."""
    config = acs.EngineConfig()
    gen = torch.Generator().manual_seed(1)
    p, s, q, current = (torch.rand(1, 32, 32, generator=gen) for _ in range(4))
    valid = (torch.rand(1, 1, 32, 32, generator=gen) > 0.3).float()
    dt = torch.tensor([0.04])
    pos, _ = grid_positions((32, 32))
    head = AttributesHead()
    # the attributes head's whole vocabulary: a colour, an achromatic colour, text, motion, positions, centre
    stacked = head.stack([head.encode(w) for w in ("red", "white", "text", "moving", "left", "top", "centre")])
    return {
        "propositional": knowing.propositional,
        "perspectival": lambda tex: knowing.perspectival(tex, torch.tensor(0.5), torch.tensor(0.5)),
        "participatory": lambda tex: gaussian_match(
            tex.expand(7, -1, -1, -1), stacked["query_weights"], stacked["query_targets"]
        ),
        "clustering": lambda tex: torch.cat(
            list(
                cluster_channels(
                    {name: tex[:, c.index : c.index + 1] for name, c in CHANNELS.items()}, pos, 6, with_clip=True
                ).values()
            )
        ),
        "balancing": lambda tex: balance(
            p,
            s,
            q,
            torch.ones(1),
            cluster_onehot(tex, 6),
            torch.tensor(0.5),
            torch.tensor(0.75),
            torch.tensor(0.1),
            torch.tensor(0.25),
            torch.tensor(0.5),
            torch.tensor(0.25),
            0.3,
        )[0],
        "realizing.post": lambda tex: torch.cat(realizing.blend(tex, valid, current[:, None], dt, 0.1, 0.3)),
        "attending": lambda tex: torch.cat(
            [
                v.float().flatten()
                for v in attending.attend(
                    current,
                    tex,
                    dt,
                    (32, 32),
                    config.k,
                    config.explore_k,
                    0.3,
                    4,
                    10,
                    1024,
                    1.5,
                    torch.tensor(0.8),
                    torch.tensor(0.25),
                    1.0,
                ).values()
            ]
        ),
    }


def test_channel_readers_are_the_stages_that_move_when_the_channel_does() -> None:
    tex = _texture()
    readers = _readers()
    assert set(readers) == set(READERS)
    with torch.no_grad():
        base = {name: f(tex) for name, f in readers.items()}
        for name, ch in CHANNELS.items():
            moved = tex.clone()
            span = ch.high - ch.low
            # shift every cell by a third of the range, wrapping inside it: each cell changes, none leaves the range
            moved[:, ch.index] = ch.low + torch.remainder(tex[:, ch.index] - ch.low + span / 3, span)
            changed = {r for r, f in readers.items() if not torch.equal(f(moved), base[r])}
            assert changed == set(ch.readers), f"{name}: read by {sorted(changed)}, the table says {ch.readers}"
    assert all(ch.readers for ch in CHANNELS.values()), "a channel no stage reads does not belong in the array"


def _tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
