"""The per-frame graph: one static, batch-first module composing the stages (DESIGN.md sections 2 and 8).

State, time step, reset flag and query are explicit inputs; the next state is an explicit output with the same
shape and dtype, so the graph has no hidden state, exports to ONNX as is, and a re-run with the same ``*_in``
has no side effects. Only the batch dimension is dynamic.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import attending, realizing
from .balancing import Balancing
from .channels import idx
from .config import EngineConfig
from .errors import ConfigError
from .knowing import Knowing, has_query, has_text
from .texture import Texture, luminance, motion_channel

if TYPE_CHECKING:
    from .clip import ClipText

INPUT_NAMES = ("frame", "dt", "reset", "query_weights", "query_targets")
STATE_NAMES = ("luma", "relevance", "saliency", "fixation", "cut_feat", "cut_mean", "since_reset")
RESULT_NAMES = ("relevance", "indices", "scores", "valid", "budgets", "lod", "boxes", "scene_score", "cut",
                "motion")
OUTPUT_NAMES = RESULT_NAMES + tuple(f"{s}_out" for s in STATE_NAMES)
STAGES = ("preprocess", "realizing.pre", "texture", "knowing", "balancing", "realizing.post", "attending")
# With the CLIP query encoder the query is the text embedding, the keyframe's features and a flag saying whether
# this frame has them come in, and the warped feature cache, its age and the motion since the keyframe are state.
CLIP_INPUT_NAMES = ("frame", "dt", "reset", "text_emb", "clip_feat", "clip_key")
CLIP_STATE_NAMES = ("clip", "clip_age", "clip_motion")


def state_names(config: EngineConfig) -> tuple[str, ...]:
    """State tensors of the graph for ``config``, in input/output order."""
    return STATE_NAMES + (CLIP_STATE_NAMES if config.uses_clip else ())


def input_names(config: EngineConfig) -> list[str]:
    """Every input of the graph for ``config``, in call order: the inputs, then each ``<state>_in``."""
    return [*(CLIP_INPUT_NAMES if config.uses_clip else INPUT_NAMES), *(f"{s}_in" for s in state_names(config))]


def output_names(config: EngineConfig) -> tuple[str, ...]:
    """Every output of the graph for ``config``: the results, then each ``<state>_out``."""
    return RESULT_NAMES + tuple(f"{s}_out" for s in state_names(config))


def state_shapes(config: EngineConfig, batch: int, clip_dim: int | None = None) -> dict[str, tuple[int, ...]]:
    """Shape of every state tensor for ``batch`` streams (all float32); ``clip_dim`` is D with CLIP."""
    h, w = config.work_size
    gh, gw = config.grid
    shapes = {
        "luma": (batch, 1, h, w),
        "relevance": (batch, gh, gw),
        "saliency": (batch, gh, gw),
        "fixation": (batch, gh, gw),
        "cut_feat": (batch, 5 * realizing.CUT_POOL ** 2),
        "cut_mean": (batch,),
        "since_reset": (batch,),
    }
    if config.uses_clip:
        if not clip_dim:
            raise ConfigError("a CLIP graph's state needs clip_dim, the model's joint-space dimension")
        shapes.update(clip=(batch, clip_dim, gh, gw), clip_age=(batch,), clip_motion=(batch,))
    return shapes


def initial_state(config: EngineConfig, batch: int = 1, device: str | torch.device = "cpu",
                  clip_dim: int | None = None) -> dict[str, Tensor]:
    """Zero state; a frame run with ``reset=True`` starts from it regardless of its values."""
    return {name: torch.zeros(shape, device=device)
            for name, shape in state_shapes(config, batch, clip_dim).items()}


def frame_shape(config: EngineConfig) -> tuple[int, int]:
    """(H, W) of the graph's frame input: the work size, or the full frame size in ``full`` input mode."""
    return config.frame_size if config.input_mode == "full" else config.work_size  # type: ignore[return-value]


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
    """The per-frame computation with the attribute query encoder.

    Call with tensors in :func:`input_names` order; returns a tuple in :func:`output_names` order.

    Args:
        config: the engine configuration. clip: a CLIP model's constants, given by :class:`ClipFrameGraph` only.

    Inputs:
        frame [B, H, W, 3] uint8 RGB (work size, or ``frame_size`` in full input mode); dt [B] float32 seconds;
        reset [B] bool; query_weights, query_targets [B, 40] float32; then every state in
        :data:`STATE_NAMES` order with the shapes of :func:`state_shapes`.

    Outputs:
        relevance [B, gh, gw] in [0, 1]; indices [B, K] int64; scores [B, K]; valid [B, K] bool;
        budgets [B, K] int32; lod [B, K] int32; boxes [B, K, 4] int32 crop windows (y0, x0, y1, x1) in cells;
        scene_score [B] in [0, 1]; cut [B] bool; motion [B] mean motion channel; then every ``<state>_out``.
    """

    def __init__(self, config: EngineConfig, clip: ClipText | None = None) -> None:
        super().__init__()
        self.config = config
        p = config.params
        self.flow_radius_cells = config.flow_radius * realizing.FLOW_DOWNSCALE / config.cell_px
        self.texture = Texture(config.grid, config.cell_px, config.clusters, self.flow_radius_cells,
                               None if clip is None else clip.basis)
        self.knowing = Knowing(p["saliency_memory"], p["foveal_falloff"], clip)
        self.balancing = Balancing(p["particularize"], p["query_share"], p["diversify"], config.clusters)
        self.inhibition = nn.Parameter(torch.tensor(p["inhibition"]), requires_grad=False)
        self.nms_iou = nn.Parameter(torch.tensor(p["nms_iou"]), requires_grad=False)
        if config.input_mode == "full":
            (h, w), (fh, fw) = config.work_size, config.frame_size
            self.register_buffer("area_h", area_matrix(h, fh), persistent=False)
            self.register_buffer("area_w", area_matrix(w, fw), persistent=False)

    def preprocess(self, frame: Tensor) -> Tensor:
        """[B, H, W, 3] uint8 -> [B, 3, h, w] float in [0, 1] at the work resolution."""
        # cast first: TensorRT takes UINT8 only as a network input consumed by a Cast (same values and layout)
        x = frame.to(torch.float32).permute(0, 3, 1, 2) / 255.0
        if self.config.input_mode == "full":
            (h, w), (fh, fw) = self.config.work_size, self.config.frame_size
            if fh % h == 0 and fw % w == 0:
                x = F.avg_pool2d(x, (fh // h, fw // w))  # integer factor: plain AveragePool
            else:
                x = torch.matmul(torch.matmul(self.area_h, x), self.area_w.t())
        return x

    def forward(self, frame: Tensor, dt: Tensor, reset: Tensor, query_weights: Tensor, query_targets: Tensor,
                luma_in: Tensor, relevance_in: Tensor, saliency_in: Tensor, fixation_in: Tensor,
                cut_feat_in: Tensor, cut_mean_in: Tensor, since_reset_in: Tensor,
                timings: dict[str, float] | None = None) -> tuple[Tensor, ...]:
        state = (luma_in, relevance_in, saliency_in, fixation_in, cut_feat_in, cut_mean_in, since_reset_in)
        return self._step(frame, dt, reset, (query_weights, query_targets), has_query(query_weights), state,
                          None, timings)

    def _step(self, frame: Tensor, dt: Tensor, reset: Tensor, query: tuple[Tensor, ...], query_on: Tensor,
              state: tuple[Tensor, ...], clip: tuple[Tensor, ...] | None,
              timings: dict[str, float] | None) -> tuple[Tensor, ...]:
        """One frame. ``state`` is the :data:`STATE_NAMES` tensors; ``clip`` is (clip_feat, clip_key, clip_in,
        clip_age_in, clip_motion_in) with CLIP, whose three states are appended to the outputs."""
        luma_in, relevance_in, saliency_in, fixation_in, cut_feat_in, cut_mean_in, since_reset_in = state
        cfg = self.config
        bsz = frame.shape[0]
        gh, gw = cfg.grid
        with _timed(timings, "preprocess"):
            rgb = self.preprocess(frame)
            luma = luminance(rgb)

        with _timed(timings, "realizing.pre"):
            small = F.avg_pool2d(luma, realizing.FLOW_DOWNSCALE)
            prev_small = F.avg_pool2d(luma_in, realizing.FLOW_DOWNSCALE)
            feat = realizing.cut_features(small, rgb)
            score, cut, cut_mean, since = realizing.detect_cut(
                feat, cut_feat_in, cut_mean_in, since_reset_in, dt, reset, cfg.cut_threshold, cfg.min_scene_len_s)
            fresh = reset | cut
            keep = (~fresh).to(luma.dtype)
            flow = realizing.coarse_flow(small, prev_small, cfg.grid, cfg.flow_radius) * keep.view(-1, 1, 1, 1)
            caches = torch.stack([relevance_in, saliency_in, fixation_in], dim=1)  # [B, 3, gh, gw]
            warped, valid = realizing.backward_warp(caches, flow)
            valid = valid * keep.view(-1, 1, 1, 1)
            motion = motion_channel(luma, luma_in, fresh, cfg.cell_px)
            clip_now = None if clip is None else realizing.clip_cache(clip[0], clip[1], clip[2], flow)

        with _timed(timings, "texture"):
            tex = self.texture(rgb, luma, motion, flow, warped * valid, clip_now)
            # a cell with no valid history stabilises its saliency with its own current value
            sal = tex[:, idx("saliency")]
            prev_sal = valid[:, 0] * tex[:, idx("prev_saliency")] + (1.0 - valid[:, 0]) * sal
            tex = torch.cat([tex[:, :idx("prev_saliency")], prev_sal[:, None],
                             tex[:, idx("prev_saliency") + 1:]], dim=1)

        with _timed(timings, "knowing"):
            p, s, q = self.knowing(tex, query, clip_now)

        with _timed(timings, "balancing"):
            bal = self.balancing(tex, p, s, q, query_on)

        with _timed(timings, "realizing.post"):
            cache, relevance = realizing.blend(warped[:, 0:1], valid, bal[:, None], motion, fresh, dt,
                                               cfg.tau_relevance_s, cfg.motion_boost)

        with _timed(timings, "attending"):
            rel_flat = relevance.reshape(bsz, gh * gw)
            fix_flat = (warped[:, 2] * valid[:, 0]).reshape(bsz, gh * gw)
            indices, scores, selected = attending.select(rel_flat, fix_flat, cfg.k, cfg.explore_k,
                                                         cfg.relevance_floor, self.inhibition)
            boxes = attending.crop_windows(indices, cfg.grid, cfg.crop_cells)
            budgets, lod = attending.foveal_budgets(scores, selected, boxes, cfg.max_foveal, cfg.max_total_budget,
                                                    cfg.kappa, self.nms_iou)
            fixation = attending.update_fixation(fix_flat, indices, selected, dt, cfg.tau_fixation_s)

        mean_motion = tex[:, idx("motion")].mean(dim=(1, 2))
        out = (
            relevance[:, 0], indices, scores, selected, budgets, lod, boxes.to(torch.int32), score, cut, mean_motion,
            luma, cache[:, 0], sal, fixation.reshape(bsz, gh, gw), feat, cut_mean, since,
        )
        if clip is None:
            return out
        key, age_in, motion_in = clip[1], clip[3], clip[4]
        zero = torch.zeros_like(age_in)
        return out + (clip_now, torch.where(key, zero, age_in + dt), torch.where(key, zero, motion_in + mean_motion))


class ClipFrameGraph(FrameGraph):
    """The per-frame computation with the CLIP query encoder (DESIGN.md sections 6 and 7).

    The participatory score is CLIP's: the full-dimension cosine between ``text_emb`` and each cell's dense CLIP
    feature (:func:`~arr_coc_stream.knowing.participatory_clip`), and channels clip_0..clip_15 are those features
    on the model's fixed basis. Features arrive on keyframes only; in between, the cached ones are warped by the
    coarse flow like the other caches.

    Args:
        config: the engine configuration (``query_encoder="clip"``).
        clip: the model's text-side constants (basis, neutral prompts, logit scale), baked in as constants.

    Inputs (in :data:`CLIP_INPUT_NAMES` + ``<state>_in`` order):
        frame, dt, reset as in :class:`FrameGraph`; text_emb [B, D] unit (zeros: no query); clip_feat
        [B, D, gh, gw] this frame's dense features, read only where clip_key [B] bool is set; then every state in
        :func:`state_names` order: clip_in [B, D, gh, gw], clip_age_in [B] seconds since the keyframe,
        clip_motion_in [B] motion accumulated since it.

    Outputs:
        as :class:`FrameGraph`, then clip_out, clip_age_out, clip_motion_out.
    """

    def __init__(self, config: EngineConfig, clip: ClipText) -> None:
        super().__init__(config, clip)

    def forward(self, frame: Tensor, dt: Tensor, reset: Tensor, text_emb: Tensor, clip_feat: Tensor,
                clip_key: Tensor, luma_in: Tensor, relevance_in: Tensor, saliency_in: Tensor, fixation_in: Tensor,
                cut_feat_in: Tensor, cut_mean_in: Tensor, since_reset_in: Tensor, clip_in: Tensor,
                clip_age_in: Tensor, clip_motion_in: Tensor,
                timings: dict[str, float] | None = None) -> tuple[Tensor, ...]:
        state = (luma_in, relevance_in, saliency_in, fixation_in, cut_feat_in, cut_mean_in, since_reset_in)
        return self._step(frame, dt, reset, (text_emb,), has_text(text_emb), state,
                          (clip_feat, clip_key, clip_in, clip_age_in, clip_motion_in), timings)


def build_graph(config: EngineConfig, clip: ClipText | None = None) -> FrameGraph:
    """The per-frame graph for ``config``: :class:`ClipFrameGraph` with the CLIP encoder, else :class:`FrameGraph`."""
    if config.uses_clip:
        if clip is None:
            raise ConfigError("query_encoder='clip' builds its graph from the model's ClipText constants")
        return ClipFrameGraph(config, clip)
    return FrameGraph(config)


@contextlib.contextmanager
def _timed(timings: dict[str, float] | None, name: str) -> Iterator[None]:
    """Record a stage's wall time in milliseconds when a timings dict is given (eager runs only)."""
    if timings is None:
        yield
        return
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + 1000.0 * (time.perf_counter() - start)

