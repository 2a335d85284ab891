"""CLIP through ``transformers``: the model behind the ``clip`` query head (:mod:`arr_coc_stream.query.clip`), its
text side and its dense keyframe features (DESIGN.md sections 6 and 7).

:func:`load_clip` loads a ``CLIPModel`` (a local folder or a hub id) with its tokenizer and image statistics and
returns a :class:`ClipModel`:

- **text**: :meth:`ClipModel.embed_text` gives unit text embeddings in the joint image-text space ``[N, D]``.
  The per-model constants of the per-frame graph (:class:`ClipText`) come from the text tower too: a fixed 16-d
  basis (the principal directions of the embeddings of a fixed vocabulary, ``data/clip_vocabulary.json``) for
  channels ``clip_0..clip_15``, the embeddings of a few neutral prompts the query competes with, and the model's
  logit scale.
- **image**: :class:`DenseClip` turns a keyframe into ``clip_feat [B, D, gh, gw]``, unit vectors in the same joint
  space, one per cell. CLIP's pooled image embedding is not localised; its patch tokens after the last block
  are not either (the last block's attention mixes every token into every other). Like MaskCLIP and ClearCLIP, the
  last block keeps only its value path: ``out_proj(v_proj(ln_1(x)))`` per token, without the attention mixing, the
  residual and the MLP, then CLIP's own post-LayerNorm and visual projection, so each patch's feature lands in the
  space of the text embeddings. The input has a short side of about 448 px (``EngineConfig.clip_size``); the
  position embeddings are interpolated once (bicubic) when the module is built, so an exported graph holds a
  constant and no bicubic resize.

Only the wiring can be checked without real weights: :func:`save_random_clip` writes a randomly initialised CLIP
with a character-level tokenizer, loaded through the same ``from_pretrained`` path (tests and benchmarks use it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..channels import CLIP_CHANNELS
from ..errors import ConfigError, ModelError

EPS = 1e-3  # norms are clamped to at least this (a zero feature stays zero; FP16-safe)
BASIS_SIZE = len(CLIP_CHANNELS)


def unit(x: Tensor, dim: int = 1) -> Tensor:
    """``x`` scaled to unit length along ``dim``; vectors shorter than EPS are scaled by 1 / EPS (zero stays zero).

    A reciprocal square root of the sum of squares: 8x faster on a CPU than dividing by ``vector_norm`` for a
    [1, 512, 32, 32] feature map, and the same operators in every runtime.
    """
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=dim, keepdim=True), min=EPS * EPS))


@lru_cache(maxsize=1)
def vocabulary() -> dict[str, Any]:
    """The fixed vocabulary (``template``, ``words``, ``neutral``) shipped in ``data/clip_vocabulary.json``."""
    text = resources.files("arr_coc_stream").joinpath("data/clip_vocabulary.json").read_text(encoding="utf-8")
    return json.loads(text)


@dataclass(frozen=True, eq=False)
class ClipText:
    """Text-side constants of one CLIP model, baked into its per-frame graph.

    Attributes:
        basis: [16, D] orthonormal rows, the principal directions of the vocabulary's text embeddings (each
            row's largest-magnitude entry positive, so the signs are fixed).
        neutral: [M, D] unit embeddings of the neutral prompts.
        logit_scale: CLIP's learned temperature (``exp(logit_scale)``, 100 for OpenAI's models).
    """

    basis: Tensor
    neutral: Tensor
    logit_scale: float

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])

    def metadata(self) -> dict[str, Any]:
        """JSON-ready record of the constants, stored with every exported CLIP graph."""
        return {
            "dim": self.dim,
            "logit_scale": round(self.logit_scale, 6),
            "basis": np.round(self.basis.numpy().astype(np.float64), 7).tolist(),
            "neutral_prompts": list(vocabulary()["neutral"]),
            "digest": self.digest(),
        }

    def digest(self) -> str:
        """Short hash of the basis and neutral embeddings (rounded to 1e-4, so it survives float noise)."""
        data = np.round(torch.cat([self.basis, self.neutral]).numpy().astype(np.float64), 4) + 0.0
        return hashlib.sha256(data.tobytes()).hexdigest()[:16]

    def matches(self, meta: Mapping[str, Any]) -> bool:
        """Whether an exported graph's ``clip`` metadata was made with these constants."""
        if meta.get("dim") != self.dim:
            return False
        basis = torch.tensor(meta.get("basis", []), dtype=torch.float32)
        return basis.shape == self.basis.shape and bool(torch.allclose(basis, self.basis, atol=1e-4))


class ClipModel:
    """A loaded CLIP model: text embeddings, per-model constants and dense keyframe modules.

    Use :func:`load_clip` to make one.

    Attributes:
        name: the local path or hub id it was loaded from.
        dim: D, the joint image-text space's dimension (``projection_dim``).
        patch_size: vision patch side in pixels.
        text: the per-model constants of the per-frame graph.
    """

    def __init__(
        self,
        name: str,
        model: Any,  # transformers' CLIPModel: its config and submodules are beyond nn.Module's types
        tokenizer: Any,
        image_mean: tuple[float, ...],
        image_std: tuple[float, ...],
    ) -> None:
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.dim = int(model.config.projection_dim)
        self.patch_size = int(model.config.vision_config.patch_size)
        self.max_text_tokens = min(
            int(model.config.text_config.max_position_embeddings), int(getattr(tokenizer, "model_max_length", 77) or 77)
        )
        if self.dim < BASIS_SIZE:
            raise ModelError(
                f"clip_model {name}: projection_dim {self.dim} is below the {BASIS_SIZE} basis "
                "directions of channels clip_0..clip_15"
            )
        self.text = self._text_constants()

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> Tensor:
        """Unit text embeddings in the joint space.

        Returns:
            [N, D] float32 on the CPU, each row of norm 1.
        """
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        emb = out if isinstance(out, Tensor) else out.pooler_output  # transformers >= 5 returns an output object
        return F.normalize(emb.float(), dim=-1)

    def input_size(self, grid: tuple[int, int], clip_size: int) -> tuple[int, int]:
        """(H, W) of the keyframe input: short side about ``clip_size``, the grid's aspect, patch multiples."""
        short = min(grid)
        return tuple(max(1, round(clip_size * g / short / self.patch_size)) * self.patch_size for g in grid)  # type: ignore[return-value]

    def dense(self, grid: tuple[int, int], clip_size: int) -> DenseClip:
        """The keyframe module for a cell grid, its position embeddings interpolated for the input size."""
        return DenseClip(
            self.model.vision_model,
            self.model.visual_projection,
            self.image_mean,
            self.image_std,
            self.input_size(grid, clip_size),
            grid,
        )

    def _text_constants(self) -> ClipText:
        vocab = vocabulary()
        emb = self.embed_text([vocab["template"].format(w) for w in vocab["words"]]).double()
        _, _, vt = torch.linalg.svd(emb - emb.mean(dim=0), full_matrices=False)
        basis = vt[:BASIS_SIZE]
        pivot = basis.abs().argmax(dim=1, keepdim=True)
        basis = basis * torch.sign(torch.gather(basis, 1, pivot))  # SVD signs are arbitrary; fix them
        scale = float(self.model.logit_scale.exp()) if hasattr(self.model, "logit_scale") else 100.0
        return ClipText(basis.float(), self.embed_text(vocab["neutral"]), scale)


def load_clip(name: str | os.PathLike[str]) -> ClipModel:
    """Load a CLIP model through ``transformers`` from a local folder or a hub id.

    Args:
        name: a folder written by ``save_pretrained`` (model, tokenizer and image processor) or a hub id such as
            ``"openai/clip-vit-base-patch16"`` (downloaded by ``transformers`` into its cache when online).

    Raises:
        ConfigError: ``transformers`` is missing (install the ``clip`` extra).
        ModelError: the path does not exist, the folder holds no model, the model is not CLIP, or its weights
            are an unsafe pickle (refused by ``weights_only`` loading, never executed).
    """
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError(
            "query_encoder='clip' needs the transformers package: pip install 'arr_coc_stream[clip]'"
        ) from exc
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"clip_model {text}: expected a folder written by save_pretrained, got a file")
        source = str(path)
    elif _looks_like_path(text):
        raise ModelError(f"clip_model path {text} does not exist")
    else:
        source = text  # a hub id
    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        where = "folder" if path.exists() else "hub id (not a local folder, and not loadable from the hub or its cache)"
        raise ModelError(f"clip_model {text}: no model config could be loaded from this {where}: {exc}") from exc
    if config.model_type != "clip":
        raise ModelError(f"clip_model {text} is a {config.model_type!r} model, not CLIP (model_type 'clip')")
    try:
        # weights load through safetensors, or torch.load(weights_only=True) for a .bin: transformers' loaders,
        # and torch's default since 2.6; a pickle that would run code is refused, never executed
        model = transformers.CLIPModel.from_pretrained(source)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        processor = transformers.AutoImageProcessor.from_pretrained(source)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"clip_model {text}: the weights file is a pickle that does more than hold tensors; it was "
            "refused, not run (save the model with safetensors)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"clip_model {text}: cannot load the model, its tokenizer or its image processor: {exc}"
        ) from exc
    return ClipModel(text, model, tokenizer, processor.image_mean, processor.image_std)


def _looks_like_path(text: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that does not exist is a missing path."""
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
        or text.endswith((".bin", ".safetensors", ".json", ".pt"))
    )


class DenseClip(nn.Module):
    """Dense CLIP features of a keyframe in the joint image-text space, resampled to the cell grid.

    Args:
        vision: the ``CLIPVisionTransformer`` (``CLIPModel.vision_model``).
        projection: ``CLIPModel.visual_projection`` (hidden size -> D).
        image_mean, image_std: the image processor's normalisation.
        input_size: (H, W) of the input, multiples of the patch size.
        grid: (gh, gw) cell grid of the output.

    Shape:
        image [B, H, W, 3] uint8 RGB -> clip_feat [B, D, gh, gw] float32, unit vectors along D.
    """

    # the buffers (registered in __init__), declared for the type checker
    positions: Tensor
    mean: Tensor
    std: Tensor

    def __init__(
        self,
        vision: Any,  # transformers' CLIPVisionTransformer: its submodules are beyond nn.Module's types
        projection: nn.Module,
        image_mean: tuple[float, ...],
        image_std: tuple[float, ...],
        input_size: tuple[int, int],
        grid: tuple[int, int],
    ) -> None:
        super().__init__()
        emb = vision.embeddings
        self.patch_embedding = emb.patch_embedding
        self.class_embedding = emb.class_embedding
        self.patch_size = int(emb.patch_size)
        self.input_size, self.grid = tuple(input_size), tuple(grid)
        self.patches = (self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size)
        self.register_buffer(
            "positions", interpolate_positions(emb.position_embedding.weight.detach(), self.patches), persistent=False
        )
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.pre_layernorm = vision.pre_layrnorm
        self.layers = vision.encoder.layers
        self.post_layernorm = vision.post_layernorm
        self.projection = projection

    def tokens(self, image: Tensor) -> Tensor:
        """Hidden states entering the last block. [B, H, W, 3] uint8 -> [B, 1 + P, C] (P patches)."""
        # Shapes use -1 for the batch and static sizes elsewhere: no Shape node reads the uint8 input, which
        # TensorRT accepts only as the input of a Cast.
        x = (image.to(torch.float32).permute(0, 3, 1, 2) / 255.0 - self.mean) / self.std
        c, p = self.class_embedding.shape[0], self.patches[0] * self.patches[1]
        x = self.patch_embedding(x).reshape(-1, c, p).transpose(1, 2)  # [B, P, C]
        cls = self.class_embedding.view(1, 1, c) + torch.zeros_like(x[:, :1])  # [B, 1, C]
        x = self.pre_layernorm(torch.cat([cls, x], dim=1) + self.positions)
        for layer in self.layers[:-1]:
            x = x + _attention(layer.self_attn, layer.layer_norm1(x))
            x = x + layer.mlp(layer.layer_norm2(x))
        return x

    def forward(self, image: Tensor) -> Tensor:
        last = self.layers[-1]
        x = self.tokens(image)[:, 1:]  # [B, P, C], the class token dropped
        v = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x)))  # value path, no mixing
        f = self.projection(self.post_layernorm(v))  # [B, P, D] in the joint space
        (ph, pw), d = self.patches, f.shape[2]
        f = f.transpose(1, 2).reshape(-1, d, ph, pw)  # [B, D, ph, pw]
        f = unit(f)
        if (ph, pw) != self.grid:
            f = unit(F.interpolate(f, size=self.grid, mode="bilinear", align_corners=False))
        return f


def _attention(attn: Any, x: Tensor) -> Tensor:  # attn: transformers' CLIPAttention (as DenseClip's vision)
    """CLIP's multi-head self-attention from its projections (plain MatMul/Softmax: exports to any runtime).

    Shape:
        x [B, N, C] -> [B, N, C].
    """
    _, n, c = x.shape
    heads = attn.num_heads

    def split(t: Tensor) -> Tensor:  # [B, N, C] -> [B, heads, N, C / heads]
        return t.reshape(-1, n, heads, c // heads).transpose(1, 2)

    q, k, v = split(attn.q_proj(x) * attn.scale), split(attn.k_proj(x)), split(attn.v_proj(x))
    w = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    return attn.out_proj((w @ v).transpose(1, 2).reshape(-1, n, c))


def interpolate_positions(weight: Tensor, patches: tuple[int, int]) -> Tensor:
    """CLIP's position embeddings for a ``patches`` grid (bicubic, like ``interpolate_pos_encoding``), once.

    Shape:
        weight [1 + n * n, C] -> [1, 1 + ph * pw, C].
    """
    n = math.isqrt(weight.shape[0] - 1)
    if n * n != weight.shape[0] - 1:
        raise ModelError(f"CLIP position embeddings of {weight.shape[0] - 1} patches do not form a square grid")
    cls, grid = weight[:1], weight[1:]
    if tuple(patches) != (n, n):
        grid = grid.reshape(1, n, n, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=patches, mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(patches[0] * patches[1], -1)
    return torch.cat([cls, grid.to(weight.dtype)])[None]


# Sizes of the random models :func:`save_random_clip` writes: "tiny" for tests, "vit-b/32" has the shapes of
# OpenAI's ViT-B/32 (vision 768 x 12 layers, patch 32; text 512 x 12 layers; joint space 512) for benchmarks.
RANDOM_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        "vision": dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        "projection_dim": 24,
    },
    "vit-b/32": {
        "text": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        "vision": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        ),
        "projection_dim": 512,
    },
}


def save_random_clip(
    path: str | os.PathLike[str], size: str = "tiny", *, seed: int = 0, vision: dict[str, Any] | None = None
) -> Path:
    """Write a randomly initialised CLIP, a character-level tokenizer and an image processor to ``path``.

    Loaded with :func:`load_clip` (the ``from_pretrained`` path users take), it exercises every step with real
    shapes; its features mean nothing. The logit scale is OpenAI's trained value (100), not the untrained 1/0.07.

    Args:
        path: folder to write. size: a key of :data:`RANDOM_SIZES`. seed: weights' seed (the global RNG is
            left as it was). vision: overrides of the vision config (e.g. ``image_size``).

    Returns:
        ``path``.
    """
    import transformers
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer, CLIPVisionConfig

    # the PIL image processor where transformers has one: the default one wants torchvision (only its statistics
    # are used here: the keyframe module normalises the frames itself)
    image_processor = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor

    if size not in RANDOM_SIZES:
        raise ConfigError(f"unknown random CLIP size {size!r}; available: {sorted(RANDOM_SIZES)}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    # Character-level BPE: every character is a token (with an end-of-word twin) and there are no merges.
    symbols = [c for c in string.ascii_lowercase + string.digits + ".,'-!?/&:;()"]
    tokens = [t for c in symbols for t in (c, c + "</w>")] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    spec = RANDOM_SIZES[size]
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(
            spec["text"],
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config={**spec["vision"], **(vision or {})},
        projection_dim=spec["projection_dim"],
        logit_scale_init_value=math.log(100.0),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    assert isinstance(config.vision_config, CLIPVisionConfig)  # CLIPConfig made it from the dict
    side = config.vision_config.image_size
    processor = CLIPProcessor(
        image_processor=image_processor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(out)
    model.save_pretrained(out)
    return out
