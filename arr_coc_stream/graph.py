"""The per-frame graph: one static, batch-first module composing the stages (DESIGN.md sections 2 and 8).

State, time step, reset flag and query are explicit inputs; the next state is an explicit output with the same
shape and dtype, so the graph has no hidden state, exports to ONNX as is, and a re-run with the same ``*_in``
has no side effects. Only the batch dimension is dynamic. :func:`graph_spec` names every input, state and output:
the core ones below, then the query head's (:mod:`arr_coc_stream.query`), whose scorer is part of the graph.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import realizing
from .attending import Attending
from .balancing import Balancing
from .channels import idx
from .config import EngineConfig
from .knowing import Knowing
from .query import QueryHead
from .spec import GraphSpec, StateSpec, TensorSpec
from .texture import Texture, luminance, motion_channel, to_grid

STAGES = ("preprocess", "realizing.pre", "texture", "knowing", "balancing", "realizing.post", "attending")


def graph_spec(config: EngineConfig, head: QueryHead) -> GraphSpec:
    """Every input, state and output of the per-frame graph for ``config`` and ``head``."""
    h, w = config.work_size
    gh, gw = config.grid
    k = config.k
    inputs = (
        TensorSpec(
            "frame", (*config.frame_shape, 3), "uint8", "RGB frame (work size, or frame_size in full input mode)"
        ),
        TensorSpec("dt", (1,), "float32", "seconds since the stream's previous frame"),
        TensorSpec("reset", (1,), "bool", "start this stream from fresh state (Triton's sequence START)"),
        *head.query_inputs(),
        *head.frame_inputs(),
    )
    states = (
        StateSpec("luma", (1, h, w), "float32", "previous work-resolution luminance in [0, 1]"),
        StateSpec("relevance", (gh, gw), "float32", "cached unboosted relevance in [0, 1]"),
        StateSpec("saliency", (gh, gw), "float32", "previous saliency in [0, 1]"),
        StateSpec("fixation", (gh, gw), "float32", "EMA of past selections in [0, 1]"),
        StateSpec(
            "cut_feat",
            (realizing.CUT_HISTORY, realizing.CUT_FEATURES),
            "float32",
            "cut layout statistics of the last frames, newest first",
        ),
        StateSpec(
            "cut_luma",
            (realizing.CUT_HISTORY, h // realizing.FLOW_DOWNSCALE, w // realizing.FLOW_DOWNSCALE),
            "float32",
            "low-resolution luminance of the last frames in [0, 1], newest first",
        ),
        StateSpec("cut_motion", (2,), "float32", "previous frame's global content motion (x, y), low-res px/frame"),
        StateSpec("cut_mean", (1,), "float32", "running mean of the cut detector's change"),
        StateSpec("since_reset", (1,), "float32", "seconds since the last reset or cut"),
        *head.states(),
    )
    outputs = (
        TensorSpec("relevance", (gh, gw), "float32", "relevance map in [0, 1]"),
        TensorSpec("indices", (k,), "int64", "row-major cell indices, by descending score"),
        TensorSpec("scores", (k,), "float32", "relevance of those cells"),
        TensorSpec("valid", (k,), "bool", "the cell is selected: in the top K and above the relevance floor"),
        TensorSpec("budgets", (k,), "int32", "foveal token budget, 0 or 64..400"),
        TensorSpec("lod", (k,), "int32", "level of detail 0..3, -1 without a budget"),
        TensorSpec("boxes", (k, 4), "int32", "crop windows (y0, x0, y1, x1) in cells, end-exclusive"),
        TensorSpec("scene_score", (1,), "float32", "cut detector score in [0, 1]"),
        TensorSpec("cut", (1,), "bool", "a scene cut starts at this frame"),
        TensorSpec("motion", (1,), "float32", "mean motion channel in [0, 1]"),
    )
    return GraphSpec(inputs, states, outputs)


def area_matrix(n_out: int, n_in: int) -> Tensor:
    """Area-resampling weights: output sample i averages the input interval it covers, exactly.

    Returns:
        [n_out, n_in], rows summing to 1.
    """
    scale = n_in / n_out
    edges = torch.arange(n_out + 1, dtype=torch.float64) * scale
    lo, hi = edges[:-1, None], edges[1:, None]
    px = torch.arange(n_in, dtype=torch.float64)[None, :]
    overlap = torch.clamp(torch.minimum(hi, px + 1) - torch.maximum(lo, px), min=0.0)
    return (overlap / scale).to(torch.float32)


class FrameGraph(nn.Module):
    """The per-frame computation for a configuration and a query head.

    Call with the tensors of ``self.spec.input_names`` in that order (states under their ``_in`` names): frame
    [B, H, W, 3] uint8, dt [B, 1] float32 seconds, reset [B, 1] bool, the head's inputs, then every state. Returns the
    tensors of ``self.spec.output_names`` in order: the results, then every ``<state>_out``; read them by name
    with ``self.spec.named(outputs)``. Shapes and value ranges are in :func:`graph_spec`.

    Args:
        config: the engine configuration.
        head: the query head; its scorer becomes part of the graph.
    """

    # buffers (registered in __init__ for input_mode "full"), declared for the type checker
    area_h: Tensor
    area_w: Tensor

    def __init__(self, config: EngineConfig, head: QueryHead) -> None:
        super().__init__()
        self.config = config
        self.spec = graph_spec(config, head)
        p = config.params
        self.texture = Texture(config.grid, config.cell_px, config.clusters)
        self.scorer = head.scorer()
        self.knowing = Knowing(p["saliency_memory"], p["foveal_falloff"])
        self.balancing = Balancing(
            p["particularize"],
            p["query_share"],
            p["diversify"],
            p["query_gate"],
            p["query_damp"],
            p["query_presence"],
            config.relevance_floor,
            config.clusters,
        )
        self.attending = Attending(config)
        if config.input_mode == "full":
            (h, w), (fh, fw) = config.work_size, config.frame_shape
            self.register_buffer("area_h", area_matrix(h, fh), persistent=False)
            self.register_buffer("area_w", area_matrix(w, fw), persistent=False)

    def preprocess(self, frame: Tensor) -> Tensor:
        """[B, H, W, 3] uint8 -> [B, 3, h, w] float in [0, 1] at the work resolution."""
        # cast first: TensorRT takes UINT8 only as a network input consumed by a Cast (same values and layout);
        # then planar (contiguous NCHW) once: the per-pixel filters downstream, the convolution above all, ran up
        # to 4x slower in eager PyTorch on the interleaved layout a bare permute leaves
        x = frame.to(torch.float32).permute(0, 3, 1, 2).contiguous() / 255.0
        if self.config.input_mode == "full":
            (h, w), (fh, fw) = self.config.work_size, self.config.frame_shape
            if fh % h == 0 and fw % w == 0:
                x = F.avg_pool2d(x, (fh // h, fw // w))  # integer factor: plain AveragePool
            else:
                x = torch.matmul(torch.matmul(self.area_h, x), self.area_w.t())
        return x

    def forward(self, *inputs: Tensor, timings: dict[str, float] | None = None) -> tuple[Tensor, ...]:
        out = self.step(dict(zip(self.spec.input_names, inputs)), timings)
        return tuple(out[name] for name in self.spec.output_names)

    def step(self, x: Mapping[str, Tensor], timings: dict[str, float] | None = None) -> dict[str, Tensor]:
        """One frame, inputs and outputs by name (see :func:`graph_spec`)."""
        cfg = self.config
        dt, reset = x["dt"][:, 0], x["reset"][:, 0]  # per-stream scalars are [B, 1] at the boundary (spec.py)
        with _timed(timings, "preprocess"):
            rgb = self.preprocess(x["frame"])
            luma = luminance(rgb)

        with _timed(timings, "realizing.pre"):
            small = to_grid(luma, realizing.FLOW_DOWNSCALE)
            prev_small = to_grid(x["luma_in"], realizing.FLOW_DOWNSCALE)
            feat = realizing.cut_features(small, rgb)
            score, cut, cut_feat, cut_luma, cut_mean, since = realizing.detect_cut(
                feat,
                small,
                x["cut_feat_in"],
                x["cut_luma_in"],
                x["cut_motion_in"],
                x["cut_mean_in"][:, 0],
                x["since_reset_in"][:, 0],
                dt,
                reset,
                cfg.cut_threshold,
                cfg.min_scene_len_s,
            )
            fresh = reset | cut
            keep = (~fresh).to(luma.dtype)
            flow = realizing.coarse_flow(small, prev_small, cfg.grid, cfg.flow_radius) * keep.view(-1, 1, 1, 1)
            caches = torch.stack([x["relevance_in"], x["saliency_in"], x["fixation_in"]], dim=1)  # [B, 3, gh, gw]
            warped, valid = realizing.backward_warp(caches, flow)
            valid = valid * keep.view(-1, 1, 1, 1)
            motion = motion_channel(luma, x["luma_in"], fresh, cfg.cell_px)
            prepared = self.scorer.prepare(x, flow)

        with _timed(timings, "texture"):
            tex = self.texture(rgb, luma, motion, warped * valid, self.scorer.channels(prepared))
            # a cell with no valid history stabilises its saliency with its own current value
            sal = tex[:, idx("saliency")]
            prev_sal = valid[:, 0] * tex[:, idx("prev_saliency")] + (1.0 - valid[:, 0]) * sal
            tex = torch.cat(
                [tex[:, : idx("prev_saliency")], prev_sal[:, None], tex[:, idx("prev_saliency") + 1 :]], dim=1
            )

        with _timed(timings, "knowing"):
            match, query_on = self.scorer(tex, rgb, x, prepared)
            p, s, q = self.knowing(tex, match, query_on)

        with _timed(timings, "balancing"):
            bal, confidence, temper = self.balancing(tex, p, s, q, query_on)

        with _timed(timings, "realizing.post"):
            boost = cfg.motion_boost * temper[:, None]  # a query tempers the motion boost of what it does not ask for
            cache, relevance = realizing.blend(tex, valid, bal[:, None], dt, cfg.tau_relevance_s, boost)

        with _timed(timings, "attending"):
            picked = self.attending(relevance[:, 0], tex, dt, confidence)

        mean_motion = tex[:, idx("motion")].mean(dim=(1, 2))
        out = {
            "relevance": relevance[:, 0],
            "indices": picked["indices"],
            "scores": picked["scores"],
            "valid": picked["valid"],
            "budgets": picked["budgets"],
            "lod": picked["lod"],
            "boxes": picked["boxes"],
            "scene_score": score[:, None],
            "cut": cut[:, None],
            "motion": mean_motion[:, None],
            "luma_out": luma,
            "relevance_out": cache[:, 0],
            "saliency_out": sal,
            "fixation_out": picked["fixation"],
            "cut_feat_out": cut_feat,
            "cut_luma_out": cut_luma,
            "cut_motion_out": realizing.next_motion(x["cut_motion_in"], flow, small.shape[-2:], fresh),
            "cut_mean_out": cut_mean[:, None],
            "since_reset_out": since[:, None],
        }
        out.update(
            {f"{name}_out": t for name, t in self.scorer.next_state(x, prepared, x["dt"], mean_motion[:, None]).items()}
        )
        return out


def example_inputs(spec: GraphSpec, batch: int) -> dict[str, Tensor]:
    """Inputs of the right shapes and dtypes for tracing: zeros (a black frame, fresh state, no query), with a
    30 fps time step and every stream reset."""
    x = {t.name: t.zeros(batch) for t in spec.input_specs()}
    x.update({s.in_name: s.fresh(batch) for s in spec.states})
    if "dt" in x:
        x["dt"] = torch.full((batch, 1), 1 / 30)
    if "reset" in x:
        x["reset"] = torch.ones(batch, 1, dtype=torch.bool)
    return x


@contextlib.contextmanager
def _timed(timings: dict[str, float] | None, name: str) -> Iterator[None]:
    """Record a stage's wall time in milliseconds when a timings dict is given (eager runs only)."""
    if timings is None:
        yield
        return
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + 1000.0 * (time.perf_counter() - start)
