"""The ``clip`` query head: open-vocabulary queries through a CLIP model (DESIGN.md sections 6 and 7).

The query is read whole by CLIP's text tower (:mod:`arr_coc_stream.query.clip_model`): ``text_emb [D]``, a unit
embedding in the joint image-text space. Dense CLIP features of a keyframe, ``clip_feat [D, gh, gw]``, come from
the head's companion graph (the last block's value path, :class:`~arr_coc_stream.query.clip_model.DenseClip`),
run on the same backend as the per-frame graph. In the per-frame graph the head:

- carries the features between keyframes in its state ``clip`` [D, gh, gw], warped by the coarse flow like the
  other caches, with ``clip_age`` (seconds since the keyframe) and ``clip_motion`` (motion accumulated since);
- writes channels clip_0..clip_15: the features on the model's fixed 16-d basis, which join the clustering;
- scores each cell by the full-dimension cosine of the text embedding and its feature, made a probability by
  competing with neutral prompts at CLIP's temperature (:func:`clip_match`).

Keyframe policy: dense features on the first frame and after every reset, every ``clip_interval_s``, and once the
accumulated motion reaches ``clip_motion_threshold``; when the graph reports a cut on a frame that had none, the
engine runs the frame again with its own features (:meth:`ClipHead.after_cut`), so the first frame of a shot is
scored with what it shows. It understands what the model understands (objects, scenes, "the person in the yellow
jacket"), and nothing is listed as ignored.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np
import torch
from torch import Tensor

from ..errors import ModelError
from ..realizing import backward_warp
from ..spec import GraphSpec, StateSpec, TensorSpec
from .base import Companion, EncodedQuery, QueryHead, QueryScorer, Runner, check_text
from .clip_model import ClipModel, ClipText, load_clip, unit

if TYPE_CHECKING:
    from ..config import EngineConfig


class ClipQuery(EncodedQuery):
    """An :class:`EncodedQuery` of the clip head: ``text_emb`` [D], the unit text embedding (zeros: no query)."""

    @property
    def embedding(self) -> np.ndarray:
        return self.tensors["text_emb"]


def clip_match(feat: Tensor, text_emb: Tensor, neutral: Tensor, logit_scale: Tensor) -> Tensor:
    """The query against neutral prompts, cell by cell, in the joint space.

    match = softmax(logit_scale * [cos(t, f), cos(n_1, f), ..., cos(n_M, f)])[0]: the full-dimension cosine of the
    text embedding t and the cell feature f, made a probability by competing with M neutral prompts ("a photo.",
    "background."...) at CLIP's own temperature. A fixed scale, unlike a per-frame normalisation: a frame without
    the queried thing scores low everywhere instead of lifting its best cell.

    Args:
        feat: [B, D, gh, gw] cell features, unit along D or zero where unknown (as :func:`clip_cache` gives
            them). text_emb: [B, D], zero without a query. neutral: [M, D] unit neutral-prompt embeddings.
        logit_scale: scalar.

    Returns:
        [B, gh, gw] in [0, 1].
    """
    bsz, d, gh, gw = feat.shape
    t = unit(text_emb)
    texts = torch.cat([t[:, None], neutral[None].expand(bsz, -1, -1)], dim=1)  # [B, 1 + M, D]
    cos = torch.bmm(texts, feat.reshape(bsz, d, gh * gw))  # one product for the query and every neutral prompt
    return torch.softmax(logit_scale * cos, dim=1)[:, 0].reshape(bsz, gh, gw)


def has_text(text_emb: Tensor) -> Tensor:
    """1.0 for streams with a CLIP query (a unit text embedding), 0.0 without (zeros). [B, D] -> [B]."""
    return (torch.linalg.vector_norm(text_emb, dim=1) > 0.5).to(text_emb.dtype)


def clip_cache(feat: Tensor, key: Tensor, cache: Tensor, flow: Tensor) -> Tensor:
    """This frame's dense CLIP features: the keyframe's where ``key`` is set, else the cache warped by the flow.

    Cells whose source lies outside the frame take the nearest border cell's feature: there is no current CLIP
    value to fall back on between keyframes (the accumulated motion brings the next keyframe forward instead).

    Args:
        feat: [B, D, gh, gw] features computed for this frame (read where ``key``). key: [B, 1] bool.
        cache: [B, D, gh, gw] the previous frame's features. flow: [B, 2, gh, gw] in cells per frame.

    Returns:
        [B, D, gh, gw], unit along D (zero where the features are zero).
    """
    warped, _ = backward_warp(cache, flow)
    return unit(torch.where(key.view(-1, 1, 1, 1), feat, warped))


class ClipScorer(QueryScorer):
    """The clip head in the graph, with the model's basis, neutral prompts and temperature as constants."""

    # the buffers (registered in __init__), declared for the type checker
    basis: Tensor
    neutral: Tensor
    logit_scale: Tensor

    def __init__(self, text: ClipText) -> None:
        super().__init__()
        self.register_buffer("basis", text.basis.detach().float().clone(), persistent=False)
        self.register_buffer("neutral", text.neutral.detach().float().clone(), persistent=False)
        self.register_buffer("logit_scale", torch.tensor(float(text.logit_scale)), persistent=False)

    def prepare(self, inputs: Mapping[str, Tensor], flow: Tensor) -> dict[str, Tensor]:
        return {"features": clip_cache(inputs["clip_feat"], inputs["clip_key"], inputs["clip_in"], flow)}

    def channels(self, prepared: Mapping[str, Tensor]) -> Tensor:
        return torch.einsum("kd,bdhw->bkhw", self.basis, prepared["features"])  # [B, 16, gh, gw]

    def forward(
        self, tex: Tensor, rgb: Tensor, inputs: Mapping[str, Tensor], prepared: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        text_emb = inputs["text_emb"]
        return clip_match(prepared["features"], text_emb, self.neutral, self.logit_scale), has_text(text_emb)

    def next_state(
        self, inputs: Mapping[str, Tensor], prepared: Mapping[str, Tensor], dt: Tensor, motion: Tensor
    ) -> dict[str, Tensor]:
        key, age, moved = inputs["clip_key"], inputs["clip_age_in"], inputs["clip_motion_in"]
        zero = torch.zeros_like(age)
        return {
            "clip": prepared["features"],
            "clip_age": torch.where(key, zero, age + dt),
            "clip_motion": torch.where(key, zero, moved + motion),
        }


class ClipHead(QueryHead):
    """Open-vocabulary queries through a CLIP model.

    Args:
        config: the engine configuration (``clip_model``, ``clip_size``, ``clip_interval_s``,
            ``clip_motion_threshold``, ``grid``).
        model: an already loaded model to share between engines (default: loaded from ``config.clip_model``).

    Attributes:
        keyframes: dense-CLIP keyframes computed so far.

    Examples:
        >>> from arr_coc_stream.query.clip_model import save_random_clip
        >>> head = ClipHead(EngineConfig(clip_model=str(save_random_clip("/tmp/tiny_clip"))))  # doctest: +SKIP
        >>> head.encode("the person in the yellow jacket").embedding.shape  # doctest: +SKIP
        (24,)
    """

    name = "clip"
    requires: ClassVar[dict[str, str]] = {"clip_model": "a local CLIP folder or a hub id"}

    def __init__(self, config: EngineConfig, model: ClipModel | None = None) -> None:
        super().__init__(config)
        self.config: EngineConfig = config
        self.model = model if model is not None else load_clip(str(config.clip_model))
        self.keyframe_size = self.model.input_size(config.grid, config.clip_size)
        self.keyframes = 0
        self._idle: dict[torch.device, dict[str, Tensor]] = {}

    def encode(self, query: str | None) -> ClipQuery:
        if query is None or not check_text(query):
            return ClipQuery(query, {"text_emb": np.zeros(self.model.dim, dtype=np.float32)})
        return ClipQuery(query, {"text_emb": self.model.embed_text([query])[0].numpy()}, (query,), ())

    def query_inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("text_emb", (self.model.dim,), "float32", "unit CLIP text embedding; zeros: no query"),)

    def frame_inputs(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec(
                "clip_feat",
                (self.model.dim, *self.config.grid),
                "float32",
                "this frame's dense CLIP features, unit along D; read only where clip_key is set",
            ),
            TensorSpec("clip_key", (1,), "bool", "this frame is a keyframe: clip_feat holds its features"),
        )

    def states(self) -> tuple[StateSpec, ...]:
        return (
            StateSpec(
                "clip",
                (self.model.dim, *self.config.grid),
                "float32",
                "the cached dense features, warped to each frame",
            ),
            StateSpec("clip_age", (1,), "float32", "seconds since the keyframe"),
            StateSpec("clip_motion", (1,), "float32", "mean motion accumulated since the keyframe"),
        )

    def scorer(self) -> ClipScorer:
        return ClipScorer(self.model.text)

    def companions(self) -> dict[str, Companion]:
        h, w = self.keyframe_size
        spec = GraphSpec(
            inputs=(TensorSpec("image", (h, w, 3), "uint8", "keyframe, RGB"),), outputs=self.frame_inputs()[:1]
        )
        return {"clip": Companion(self.model.dense(self.config.grid, self.config.clip_size), spec)}

    def before_frame(
        self,
        frame: np.ndarray,
        state: Mapping[str, Tensor],
        *,
        reset: bool,
        first: bool,
        dt: float,
        companions: Mapping[str, Runner],
        timings: dict[str, float],
    ) -> tuple[dict[str, Tensor], str | None]:
        why = self._due(state, reset, first, dt)
        if why is None:
            return self._no_features(state["clip_age"].device), None
        return self._features(frame, companions, timings), why

    def after_cut(
        self, frame: np.ndarray, keyframe: str | None, companions: Mapping[str, Runner], timings: dict[str, float]
    ) -> tuple[dict[str, Tensor] | None, str | None]:
        if keyframe is None:  # score the shot's first frame with its own features
            return self._features(frame, companions, timings), "cut"
        return None, "cut"

    def _due(self, state: Mapping[str, Tensor], reset: bool, first: bool, dt: float) -> str | None:
        """Why this frame needs dense CLIP features before the graph runs (a cut is known only after)."""
        if reset:
            return "first" if first else "reset"
        if float(state["clip_age"][0]) + dt >= self.config.clip_interval_s - 1e-6:
            return "interval"
        threshold = self.config.clip_motion_threshold
        if threshold is not None and float(state["clip_motion"][0]) >= threshold:
            return "motion"
        return None

    def _no_features(self, device: torch.device) -> dict[str, Tensor]:
        """clip_feat and clip_key between keyframes: zeros the graph does not read, made once per device (a
        [1, D, gh, gw] tensor is 2 MB at D = 512, too much to allocate, or copy to a GPU, on every frame)."""
        if device not in self._idle:
            self._idle[device] = {
                "clip_feat": torch.zeros((1, self.model.dim, *self.config.grid), device=device),
                "clip_key": torch.tensor([[False]], device=device),
            }
        return self._idle[device]

    def _features(
        self, frame: np.ndarray, companions: Mapping[str, Runner], timings: dict[str, float]
    ) -> dict[str, Tensor]:
        """clip_feat and clip_key of a keyframe: the companion graph's features of ``frame``."""
        t0 = time.perf_counter()
        h, w = self.keyframe_size
        image = (
            frame
            if frame.shape[:2] == (h, w)
            else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if frame.shape[0] >= h else cv2.INTER_LINEAR)
        )
        feat = companions["clip"]({"image": torch.from_numpy(np.ascontiguousarray(image))[None]})["clip_feat"]
        self.keyframes += 1
        timings["clip"] = timings.get("clip", 0.0) + 1000.0 * (time.perf_counter() - t0)
        return {"clip_feat": feat, "clip_key": torch.tensor([[True]])}

    def input_size(self) -> tuple[int, int]:
        return self.keyframe_size

    def tag(self) -> str:
        return re.sub(r"[^A-Za-z0-9.-]+", "-", Path(str(self.config.clip_model)).name).strip("-.")

    def metadata(self) -> dict[str, Any]:
        return {"model": self.model.name, **self.model.text.metadata()}

    def check_metadata(self, meta: Mapping[str, Any], source: str | os.PathLike[str]) -> None:
        if not self.model.text.matches(meta):
            raise ModelError(
                f"{source} was exported with another CLIP model ({meta.get('model')}, basis "
                f"{meta.get('digest')}) than {self.model.name} (basis {self.model.text.digest()}); "
                "re-export it with this model"
            )

    def header(self) -> dict[str, Any]:
        return {
            "clip": {
                "model": self.model.name,
                "dim": self.model.dim,
                "basis_digest": self.model.text.digest(),
                "input_size": list(self.keyframe_size),
            }
        }
