"""Feed a Qwen2-VL-family model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) only the visual tokens the engine selected.

The engine's cell grid is made the model's merged-token grid: one cell is one language-model token of
``patch_size * spatial_merge_size`` pixels (28 for Qwen2/2.5-VL, 32 for Qwen3-VL, read from the model's config), so
a selected cell indexes a vision token directly (:func:`engine_options` gives the engine fields that match a model).
:func:`build_inputs` then

1. resizes the frames to that grid and lays their pixels out as the model's patch embedding reads them (the stock
   video processor needs torchvision, which has no CPU build here), two frames per temporal token where
   ``temporal_patch_size`` is 2 (a token is kept when either frame selected its cell);
2. runs the vision tower once on every frame and gathers the merged tokens of the kept cells (Qwen3-VL: its
   deepstack features too, with the same index);
3. takes the multimodal RoPE ids (temporal, height, width) of the full, unpruned sequence from the model's own
   ``get_rope_index`` and keeps those of the text and of the kept tokens: nothing is renumbered, so every kept token
   sits where it would in the full sequence.

The result feeds ``model(**inputs.model_kwargs())`` and ``model.generate(**inputs.model_kwargs())`` unchanged.
:func:`answer` is the whole question-to-text path; :func:`load_vlm` loads a folder written by ``save_pretrained``.
The random models of the tests, the README and the benchmark are in :mod:`arr_coc_stream.vlm_bench`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from .config import EngineConfig
from .errors import ConfigError, MissingExtraError, ModelError
from .result import FrameResult

if TYPE_CHECKING:
    from .sources.base import Frame

# config.model_type of each supported family -> the transformers class that generates
FAMILIES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
# Where the pixel statistics of a folder written by save_pretrained live (the video processor's first)
_PREPROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise MissingExtraError("feeding a VLM (arr_coc_stream.vlm)", "vlm") from e
    return transformers


@dataclass(frozen=True)
class VisionGeometry:
    """How a model's vision tower cuts frames into language-model tokens (from its config).

    Attributes:
        family: the config's ``model_type`` (a key of :data:`FAMILIES`).
        patch_size: pixels per side of a patch the vision tower embeds.
        merge_size: patches per side merged into one language-model token.
        temporal_patch_size: frames per temporal token.
    """

    family: str
    patch_size: int
    merge_size: int
    temporal_patch_size: int

    @property
    def token_px(self) -> int:
        """Pixels per side of one merged token: ``patch_size * merge_size``."""
        return self.patch_size * self.merge_size

    def frame_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        """(H, W) in pixels of a frame whose merged-token grid is ``grid`` (rows, cols)."""
        return grid[0] * self.token_px, grid[1] * self.token_px


def geometry(model: Any) -> VisionGeometry:
    """Read a Qwen2-VL-family model's vision geometry from its config.

    Args:
        model: a loaded ``*ForConditionalGeneration`` of the family, or its config.

    Raises:
        ModelError: not a model of the family (naming what it is), or a non-square patch.
    """
    config = getattr(model, "config", model)
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        what = type(model).__name__ if family is None else f"{type(model).__name__} (model_type {family!r})"
        raise ModelError(f"not a Qwen2-VL-family model: {what}; supported model types: {sorted(FAMILIES)}")
    vision = config.vision_config
    values = {}
    for name in ("patch_size", "temporal_patch_size"):
        value = getattr(vision, name)
        sides = set(value) if isinstance(value, (list, tuple)) else {value}
        if len(sides) != 1:
            raise ModelError(f"vision_config.{name}={value!r}: only square patches are supported")
        values[name] = int(sides.pop())
    return VisionGeometry(family, values["patch_size"], int(vision.spatial_merge_size), values["temporal_patch_size"])


def engine_options(
    model: Any, frame_size: tuple[int, int], *, max_cells: int | None = None, cell_px: int | None = None
) -> dict[str, Any]:
    """The :class:`EngineConfig` fields whose cell grid is ``model``'s merged-token grid for frames of ``frame_size``.

    The grid keeps the frame's aspect ratio at one cell per ``token_px`` source pixels, scaled down to at most
    ``max_cells`` cells, as the model's own processor resizes a frame to multiples of ``token_px`` under a pixel
    budget. Each side is a multiple of ``32 / gcd(32, cell_px)`` cells (4 at the default 8 px cells) and at least 4:
    the engine's work size must be a multiple of 32 pixels (its cut detector lays an 8 x 8 grid over a quarter of
    the work resolution), and 4 cells a side is its minimum.

    Args:
        model: a Qwen2-VL-family model or its config.
        frame_size: (H, W) of the source frames.
        max_cells: most cells (tokens per temporal token); default: the engine's default grid's cell count (1024).
        cell_px: engine work pixels per cell (default: the engine's); the work size is ``grid * cell_px``.

    Returns:
        ``{"grid": (gh, gw), "cell_px": ..., "k": ...}`` for ``Engine(**options)`` / ``run(source, **options)``;
        ``k`` is the engine's default, capped at the cell count. The model's frames are then
        ``geometry(model).frame_size(grid)`` pixels.

    Raises:
        ModelError: not a model of the family. ConfigError: a frame size, ``max_cells`` or ``cell_px`` for which no
            grid fits, naming it.
    """
    geo = geometry(model)
    default = EngineConfig()
    max_cells = default.cells if max_cells is None else int(max_cells)
    cell_px = default.cell_px if cell_px is None else int(cell_px)
    h, w = (int(v) for v in frame_size)
    if h < 1 or w < 1:
        raise ConfigError(f"frame_size must be (H, W) >= 1, got {frame_size}")
    if cell_px < 4 or cell_px % 4:
        raise ConfigError(f"cell_px must be a multiple of 4, >= 4, got {cell_px}")
    step = 32 // math.gcd(32, cell_px)
    low = -(-4 // step) * step  # the smallest side: >= 4 cells and a multiple of step
    gh, gw = h / geo.token_px, w / geo.token_px
    scale = min(1.0, math.sqrt(max_cells / (gh * gw)))
    grid = tuple(max(low, int(side * scale) // step * step) for side in (gh, gw))  # floor: never above max_cells
    if grid[0] * grid[1] > max_cells:
        raise ConfigError(
            f"no grid of >= {low} x {low} cells (sides multiples of {step} at cell_px={cell_px}) matches "
            f"frame_size {frame_size} within max_cells={max_cells}: it needs {grid[0]} x {grid[1]} cells"
        )
    return {"grid": grid, "cell_px": cell_px, "k": min(default.k, grid[0] * grid[1])}


def load_vlm(path: str | Path, *, attn_implementation: str | None = None) -> tuple[Any, Any]:
    """Load a Qwen2-VL-family model and its tokenizer from a folder written by ``save_pretrained``.

    Returns:
        ``(model, tokenizer)``, the model in eval mode on the CPU.

    Raises:
        ModelError: the folder is missing, has no model config, or holds a model of another family.
        MissingExtraError: transformers is not installed (the ``vlm`` extra).
    """
    transformers = _transformers()
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelError(f"no model folder (config.json) at {str(path)!r}")
    config = transformers.AutoConfig.from_pretrained(folder)
    geometry(config)  # the family check, before any weight is read
    cls = getattr(transformers, FAMILIES[config.model_type])
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = cls.from_pretrained(folder, **kwargs).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def pixel_stats(model: Any, processor: Any = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) per RGB channel the model's processor normalises pixels in [0, 1] with.

    From ``processor`` when given: a ``(mean, std)`` pair, an image or video processor, or a processor holding
    one; else from the ``video_preprocessor_config.json`` / ``preprocessor_config.json`` in the model's folder.

    Returns:
        ``(mean, std)``, three floats each.

    Raises:
        ModelError: neither gives ``image_mean`` and ``image_std``.
    """
    if isinstance(processor, tuple) and len(processor) == 2:
        return tuple(float(v) for v in processor[0]), tuple(float(v) for v in processor[1])
    sources: list[Any] = []
    if processor is not None:
        sources += [processor, getattr(processor, "video_processor", None), getattr(processor, "image_processor", None)]
    folder: str | None = getattr(model, "name_or_path", None)
    for name in _PREPROCESSOR_FILES:
        if folder and (Path(folder) / name).is_file():
            sources.append(json.loads((Path(folder) / name).read_text(encoding="utf-8")))
    for source in sources:
        get = source.get if isinstance(source, dict) else lambda k, s=source: getattr(s, k, None)
        mean, std = get("image_mean"), get("image_std")
        if mean is not None and std is not None:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    raise ModelError(
        f"no pixel statistics (image_mean, image_std) for {type(model).__name__}: pass processor=, or save the "
        f"model's processor config ({' or '.join(_PREPROCESSOR_FILES)}) beside it"
    )


def patchify(
    video: np.ndarray, geo: VisionGeometry, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay frames out as the model's patch embedding reads them (the stock video processor's layout).

    Args:
        video: [N, H, W, 3] uint8 RGB, H and W multiples of ``geo.token_px``; N is padded to a multiple of
            ``temporal_patch_size`` by repeating the last frame, as the stock processor does.
        geo: the model's :class:`VisionGeometry`. mean, std: per-channel statistics of pixels in [0, 1].

    Returns:
        ``pixel_values_videos`` [T * gh * gw, 3 * tp * p * p] float32 with rows in (t, merged row, merged col,
        row in merge, col in merge) order, and ``video_grid_thw`` [1, 3] int64 = (T, gh, gw) in patches, where
        T = N / tp, gh = H / p, gw = W / p, p = ``patch_size``, tp = ``temporal_patch_size``.
    """
    n, h, w, c = video.shape
    p, m, tp = geo.patch_size, geo.merge_size, geo.temporal_patch_size
    if h % (p * m) or w % (p * m):
        raise ConfigError(f"frames of {h} x {w} px are not multiples of the model's {p * m} px tokens")
    x = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float() / 255.0  # [N, 3, H, W]
    x = (x - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1)
    if n % tp:
        x = torch.cat([x, x[-1:].expand(tp - n % tp, -1, -1, -1)])
    t, gh, gw = x.shape[0] // tp, h // p, w // p
    x = x.view(t, tp, c, gh // m, m, p, gw // m, m, p)
    # -> (t, merged row, merged col, row in merge, col in merge, channel, frame in patch, py, px)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * gh * gw, c * tp * p * p)
    return x.contiguous(), torch.tensor([[t, gh, gw]], dtype=torch.int64)


def keep_index(results: Sequence[FrameResult], temporal_patch_size: int) -> np.ndarray:
    """Merged-token indices of the selected cells, ``temporal_patch_size`` frames per temporal token.

    A token is kept when any frame of its temporal patch selected its cell; a short last patch repeats its last
    frame (as the frames are padded).

    Returns:
        [n] int64, ascending: ``t * gh * gw + row * gw + col`` (the vision tower's output order).
    """
    masks = np.stack([r.selection_mask().reshape(-1) for r in results])  # [N, gh * gw]
    if len(masks) % temporal_patch_size:
        pad = temporal_patch_size - len(masks) % temporal_patch_size
        masks = np.concatenate([masks, np.repeat(masks[-1:], pad, axis=0)])
    per_token = masks.reshape(-1, temporal_patch_size, masks.shape[1]).any(axis=1)  # [T, gh * gw]
    return np.flatnonzero(per_token.reshape(-1)).astype(np.int64)


@dataclass
class VLMInputs:
    """A question and a clip as model inputs, with only the kept visual tokens (see :func:`build_inputs`).

    Attributes:
        input_ids: [1, L] int64, the pruned sequence: the text and the kept video tokens.
        position_ids: [3, 1, L] int64 (t, h, w) M-RoPE ids, each the id of that token in the full sequence.
        video: the pruned vision output for ``mm_encoder_outputs["video"]``: ``pooler_output`` a one-tuple of
            [n_kept, hidden] (Qwen3-VL: ``deepstack_features``, one such tuple per deepstack layer).
        keep: [n_kept] int64 indices of the kept merged tokens in the vision tower's output (see :func:`keep_index`).
        sequence_keep: [L_full] bool, True at the full sequence's positions kept in ``input_ids``.
        full: the stock model's inputs for the full clip (``input_ids`` [1, L_full], ``mm_token_type_ids``
            (0 text, 2 video), ``pixel_values_videos``, ``video_grid_thw``, Qwen2.5-VL ``second_per_grid_ts``).
        full_position_ids: [3, 1, L_full] int64, the model's ``get_rope_index`` on ``full``.
        full_video: the vision tower's output on every frame (``pooler_output`` a one-tuple of [n_full, hidden]).
        grid: (gh, gw) merged tokens per frame (the engine's grid).
        vision_ms: milliseconds the vision tower took.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    video: Any
    keep: torch.Tensor
    sequence_keep: torch.Tensor
    full: dict[str, torch.Tensor]
    full_position_ids: torch.Tensor
    full_video: Any
    grid: tuple[int, int]
    vision_ms: float

    @property
    def tokens_kept(self) -> int:
        """Visual tokens the language model reads."""
        return int(self.keep.numel())

    @property
    def tokens_full(self) -> int:
        """Visual tokens of the unpruned clip."""
        return int(self.full_video.pooler_output[0].shape[0])

    def model_kwargs(self, pruned: bool = True) -> dict[str, Any]:
        """Keyword arguments of ``model(...)`` and ``model.generate(...)``: the pruned sequence, or (``pruned=False``)
        the full one with the same precomputed vision output (the stock model's computation, vision tower aside)."""
        if pruned:
            return {
                "input_ids": self.input_ids,
                "position_ids": self.position_ids,
                "mm_encoder_outputs": {"video": self.video},
            }
        return {
            "input_ids": self.full["input_ids"],
            "position_ids": self.full_position_ids,
            "mm_encoder_outputs": {"video": self.full_video},
        }


def build_inputs(
    model: Any,
    tokenizer: Any,
    question: str,
    frames: Sequence[np.ndarray | Frame],
    results: Sequence[FrameResult],
    *,
    processor: Any = None,
) -> VLMInputs:
    """Build the model inputs of ``question`` about ``frames`` with only the visual tokens ``results`` selected.

    Args:
        model: a loaded Qwen2-VL-family ``*ForConditionalGeneration`` (see :func:`load_vlm`).
        tokenizer: its tokenizer (a chat template, when it has one, frames the question; else the video then the
            question).
        question: the text after the video.
        frames: the frames the results are of, in order: [H, W, 3] uint8 RGB at any size (the source's full
            resolution is best: each is resized to the grid's ``token_px`` pixels per cell), or
            :class:`~arr_coc_stream.sources.Frame` (its ``full`` frame when read with ``keep_full=True``).
        results: one :class:`FrameResult` per frame, all on one grid (the engine built with
            :func:`engine_options`); ``time`` gives Qwen2.5-VL's seconds per temporal token and Qwen3-VL's
            timestamps.
        processor: where the pixel statistics come from (a processor or a ``(mean, std)`` pair, see
            :func:`pixel_stats`); default: the model's folder.

    Returns:
        :class:`VLMInputs`.

    Raises:
        ModelError: not a model of the family; no pixel statistics. ConfigError: no frames, frames and results of
            different lengths, results on different grids (naming them), a frame that is not [H, W, 3] uint8.
    """
    geo = geometry(model)
    if not isinstance(question, str):
        raise ConfigError(f"question must be a string, got {type(question).__name__}")
    if len(frames) == 0 or len(frames) != len(results):
        raise ConfigError(
            f"need one result per frame and at least one: got {len(frames)} frames, {len(results)} results"
        )
    grids = sorted({r.grid for r in results})
    if len(grids) != 1:
        raise ConfigError(f"the results must share one grid to match the model's token grid, got grids {grids}")
    grid = grids[0]
    mean, std = pixel_stats(model, processor)
    size = geo.frame_size(grid)
    video = np.stack([_resized(f, size) for f in frames])  # [N, H, W, 3]
    pixels, thw = patchify(video, geo, mean, std)
    keep = torch.from_numpy(keep_index(results, geo.temporal_patch_size))
    times = [r.time for r in results]

    ids, types = _sequence(model.config, geo, tokenizer, question, grid, int(thw[0, 0]), times)
    full: dict[str, torch.Tensor] = {
        "input_ids": ids,
        "mm_token_type_ids": types,
        "pixel_values_videos": pixels,
        "video_grid_thw": thw,
    }
    seconds = _seconds_per_temporal_token(times, geo.temporal_patch_size)
    if geo.family == "qwen2_5_vl" and seconds is not None:
        full["second_per_grid_ts"] = torch.tensor([seconds])
    device = model.device
    full = {k: v.to(device) for k, v in full.items()}
    inner = model.model
    rope_args = {k: v for k, v in full.items() if k != "pixel_values_videos"}
    with torch.no_grad():  # not inference_mode: the outputs must also serve a forward outside it
        positions, _ = inner.get_rope_index(**rope_args)  # [3, 1, L_full]
        start = time.perf_counter()
        features = inner.get_video_features(full["pixel_values_videos"], full["video_grid_thw"], return_dict=True)
        vision_ms = 1000.0 * (time.perf_counter() - start)

    # keep every text token and the kept video tokens, in sequence order
    video_at = torch.nonzero(types[0] == 2).flatten()  # [n_full] sequence positions of the video tokens
    sequence_keep = torch.ones(ids.shape[1], dtype=torch.bool)
    sequence_keep[video_at] = False
    sequence_keep[video_at[keep]] = True
    sequence_keep = sequence_keep.to(device)
    return VLMInputs(
        input_ids=full["input_ids"][:, sequence_keep],
        position_ids=positions[:, :, sequence_keep],
        video=_prune(features, keep.to(device)),
        keep=keep,
        sequence_keep=sequence_keep,
        full=full,
        full_position_ids=positions,
        full_video=features,
        grid=grid,
        vision_ms=vision_ms,
    )


def _resized(frame: np.ndarray | Frame, size: tuple[int, int]) -> np.ndarray:
    """A frame as [H, W, 3] uint8 at ``size`` (area when shrinking, linear when growing)."""
    image = frame if isinstance(frame, np.ndarray) else (frame.full if frame.full is not None else frame.rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"frames must be [H, W, 3] uint8 RGB, got {image.shape} {image.dtype}")
    if image.shape[:2] == size:
        return image
    shrink = image.shape[0] * image.shape[1] > size[0] * size[1]
    return cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _seconds_per_temporal_token(times: Sequence[float], temporal_patch_size: int) -> float | None:
    """Seconds a temporal token spans at the frames' mean interval; None for a single frame or a still clock."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return temporal_patch_size * (times[-1] - times[0]) / (len(times) - 1)


def _sequence(
    config: Any,
    geo: VisionGeometry,
    tokenizer: Any,
    question: str,
    grid: tuple[int, int],
    temporal: int,
    times: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full sequence's ``input_ids`` and ``mm_token_type_ids`` ([1, L_full] each), as the stock processor
    writes them: the video as one vision block (Qwen2/2.5-VL) or one block per temporal token after its
    ``<t seconds>`` timestamp (Qwen3-VL)."""
    start, pad, end = config.vision_start_token_id, config.video_token_id, config.vision_end_token_id
    before, after = _prompt(tokenizer, question, tokenizer.convert_ids_to_tokens(pad))
    before = before.removesuffix(tokenizer.convert_ids_to_tokens(start))  # the blocks below bring their own
    after = after.removeprefix(tokenizer.convert_ids_to_tokens(end))
    per_token = grid[0] * grid[1]

    def text(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []

    ids, types = text(before), [0] * len(text(before))
    if geo.family == "qwen3_vl":
        # the processor's timestamps: a temporal token's frames' mean time, the padded last frame repeating its own
        tp = geo.temporal_patch_size
        padded = list(times) + [times[-1]] * (temporal * tp - len(times))
        blocks = [
            (text(f"<{(padded[t * tp] + padded[t * tp + tp - 1]) / 2:.1f} seconds>"), per_token)
            for t in range(temporal)
        ]
    else:
        blocks = [([], temporal * per_token)]
    for stamp, count in blocks:
        ids += stamp + [start] + [pad] * count + [end]
        types += [0] * (len(stamp) + 1) + [2] * count + [0]
    tail = text(after)
    ids += tail
    types += [0] * len(tail)
    return torch.tensor([ids], dtype=torch.int64), torch.tensor([types], dtype=torch.int32)


def _prompt(tokenizer: Any, question: str, video_token: str) -> tuple[str, str]:
    """The text before and after the video: the tokenizer's chat template around a video and the question, or
    nothing before and the question after when it has none."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before, found, after = text.partition(video_token)
        if found:
            return before, after
    return "", question


def _prune(features: Any, keep: torch.Tensor) -> Any:
    """The vision output with only the ``keep`` rows of the merged tokens (and of every deepstack level)."""
    values: dict[str, Any] = {"pooler_output": (features.pooler_output[0][keep],)}
    if getattr(features, "deepstack_features", None) is not None:
        values["deepstack_features"] = [(level[0][keep],) for level in features.deepstack_features]
    names = {f.name for f in fields(features)}
    return type(features)(**{k: v for k, v in values.items() if k in names})


def prefill_ms(model: Any, kwargs: dict[str, Any], repeats: int = 1) -> float:
    """Milliseconds of the language model's prefill on ``kwargs`` (vision output precomputed), best of ``repeats``.

    The prefill as ``generate`` runs it: a key-value cache is filled and only the last position's logits are made.
    """
    best = math.inf
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(**kwargs, use_cache=True, logits_to_keep=1)
            best = min(best, 1000.0 * (time.perf_counter() - start))
    return best


@dataclass
class Answer:
    """A generated answer (see :func:`answer`).

    Attributes:
        text: the decoded new tokens, special tokens left out.
        token_ids: [n_new] int64 generated token ids.
        tokens_kept: visual tokens the model read. tokens_full: visual tokens of the unpruned clip.
        inputs: the :class:`VLMInputs` it was generated from.
    """

    text: str
    token_ids: torch.Tensor
    tokens_kept: int
    tokens_full: int
    inputs: VLMInputs


def answer(
    model: Any,
    tokenizer: Any,
    question: str,
    frames: Sequence[np.ndarray | Frame],
    results: Sequence[FrameResult],
    *,
    max_new_tokens: int = 64,
    processor: Any = None,
) -> Answer:
    """Answer ``question`` about ``frames`` from only the selected visual tokens (greedy decoding).

    Args and Raises: as :func:`build_inputs`; ``max_new_tokens`` >= 1 (ConfigError otherwise).

    Example:
        >>> from arr_coc_stream import run, synth, vlm, vlm_bench
        >>> model, tokenizer = vlm.load_vlm(vlm_bench.save_random_vlm("/tmp/arr_coc_stream_tiny_vlm"))
        >>> clip = synth.moving_object("red", n_frames=4)
        >>> results = run(clip.frames, query="red", **vlm.engine_options(model, clip.frames[0].shape[:2]))
        >>> out = vlm.answer(model, tokenizer, "where is the red ball ?", clip.frames, results, max_new_tokens=3)
        >>> out.tokens_kept <= out.tokens_full, len(out.token_ids) <= 3
        (True, True)
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    inputs = build_inputs(model, tokenizer, question, frames, results, processor=processor)
    with torch.inference_mode():
        out = model.generate(**inputs.model_kwargs(), max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs.input_ids.shape[1] :].cpu()
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Answer(text, new, inputs.tokens_kept, inputs.tokens_full, inputs)
