"""The per-frame graph: one static, batch-first module composing the stages (DESIGN.md sections 2 and 8).

State, time step, reset flag and query are explicit inputs; the next state is an explicit output with the same
shape and dtype, so the graph has no hidden state, exports to ONNX as is, and a re-run with the same ``*_in``
has no side effects. Only the batch dimension is dynamic.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import attending, realizing
from .balancing import Balancing
from .channels import idx
from .config import EngineConfig
from .knowing import Knowing, has_query
from .texture import Texture, luminance, motion_channel

INPUT_NAMES = ("frame", "dt", "reset", "query_weights", "query_targets")
STATE_NAMES = ("luma", "relevance", "saliency", "fixation", "cut_feat", "cut_mean", "since_reset")
RESULT_NAMES = ("relevance", "indices", "scores", "valid", "budgets", "lod", "boxes", "scene_score", "cut",
                "motion")
OUTPUT_NAMES = RESULT_NAMES + tuple(f"{s}_out" for s in STATE_NAMES)
STAGES = ("preprocess", "realizing.pre", "texture", "knowing", "balancing", "realizing.post", "attending")


def state_shapes(config: EngineConfig, batch: int) -> dict[str, tuple[int, ...]]:
    """Shape of every state tensor for ``batch`` streams (all float32)."""
    h, w = config.work_size
    gh, gw = config.grid
    return {
        "luma": (batch, 1, h, w),
        "relevance": (batch, gh, gw),
        "saliency": (batch, gh, gw),
        "fixation": (batch, gh, gw),
        "cut_feat": (batch, 5 * realizing.CUT_POOL ** 2),
        "cut_mean": (batch,),
        "since_reset": (batch,),
    }


def initial_state(config: EngineConfig, batch: int = 1, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Zero state; a frame run with ``reset=True`` starts from it regardless of its values."""
    return {name: torch.zeros(shape, device=device) for name, shape in state_shapes(config, batch).items()}


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
    """The per-frame computation. Call with tensors in :data:`INPUT_NAMES` + ``<state>_in`` order.

    Inputs:
        frame [B, H, W, 3] uint8 RGB (work size, or ``frame_size`` in full input mode); dt [B] float32 seconds;
        reset [B] bool; query_weights, query_targets [B, 40] float32; then every state in
        :data:`STATE_NAMES` order with the shapes of :func:`state_shapes`.

    Outputs (tuple in :data:`OUTPUT_NAMES` order):
        relevance [B, gh, gw] in [0, 1]; indices [B, K] int64; scores [B, K]; valid [B, K] bool;
        budgets [B, K] int32; lod [B, K] int32; boxes [B, K, 4] int32 crop windows (y0, x0, y1, x1) in cells;
        scene_score [B] in [0, 1]; cut [B] bool; motion [B] mean motion channel; then every ``<state>_out``.
    """

    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.config = config
        p = config.params
        self.flow_radius_cells = config.flow_radius * realizing.FLOW_DOWNSCALE / config.cell_px
        self.texture = Texture(config.grid, config.cell_px, config.clusters, self.flow_radius_cells)
        self.knowing = Knowing(p["saliency_memory"], p["foveal_falloff"])
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

        with _timed(timings, "texture"):
            tex = self.texture(rgb, luma, motion, flow, warped * valid)
            # a cell with no valid history stabilises its saliency with its own current value
            sal = tex[:, idx("saliency")]
            prev_sal = valid[:, 0] * tex[:, idx("prev_saliency")] + (1.0 - valid[:, 0]) * sal
            tex = torch.cat([tex[:, :idx("prev_saliency")], prev_sal[:, None],
                             tex[:, idx("prev_saliency") + 1:]], dim=1)

        with _timed(timings, "knowing"):
            p, s, q = self.knowing(tex, query_weights, query_targets)

        with _timed(timings, "balancing"):
            bal = self.balancing(tex, p, s, q, has_query(query_weights))

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

        return (
            relevance[:, 0], indices, scores, selected, budgets, lod, boxes.to(torch.int32), score, cut,
            tex[:, idx("motion")].mean(dim=(1, 2)),
            luma, cache[:, 0], sal, fixation.reshape(bsz, gh, gw), feat, cut_mean, since,
        )


@contextlib.contextmanager
def _timed(timings: dict[str, float] | None, name: str) -> Iterator[None]:
    """Record a stage's wall time in milliseconds when a timings dict is given (eager runs only)."""
    if timings is None:
        yield
        return
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + 1000.0 * (time.perf_counter() - start)

