"""Random Qwen2-VL-family models (tests, examples, the benchmark) and the prefill benchmark of :mod:`.vlm`.

:func:`save_random_vlm` writes a randomly initialised model of any of the three families with a word-level
tokenizer to a folder, the way ``save_pretrained`` writes a real checkpoint, so everything downstream loads it
through ``from_pretrained`` as the ``ask`` command does. :func:`prefill_table` times the language model's prefill
on the full and on the pruned visual tokens of a clip (``python -m arr_coc_stream.vlm_bench``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import vlm
from .errors import ConfigError

# Special tokens the Qwen2-VL family's configs point at (vision_start/end, video/image pad) and the tokenizer's own.
SPECIAL_TOKENS = ("<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "[UNK]")
# The words the random tokenizer knows: enough for the test and README questions; anything else is [UNK].
WORDS = tuple(
    "where is the red green blue yellow ball car person a an of in on at top bottom left right corner "
    "what colour color which side does it move go is there yes no frame video seconds ? . , 0 1 2 3 4 5 6 7 8 9".split()
)
FAMILIES = tuple(vlm.FAMILIES)

# Widths of the random models. "tiny": a few hundred thousand parameters (tests); "bench": the language model of
# Qwen2-VL-2B (1536 wide, 12 heads, 2 KV heads, MLP 8960) cut to 4 layers, behind a small vision tower (the vision
# tower runs once for both the full and the pruned sequence, so only its output width matters to the prefill).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden=32, layers=2, heads=2, kv_heads=1, mlp=64, vision=32, vision_depth=2, vision_heads=2),
    "bench": dict(hidden=1536, layers=4, heads=12, kv_heads=2, mlp=8960, vision=128, vision_depth=1, vision_heads=2),
}


def random_vlm_config(family: str, size: str = "tiny", vocab_size: int = 128) -> Any:
    """A random-model config of ``family`` (``"qwen2_vl"``, ``"qwen2_5_vl"``, ``"qwen3_vl"``) at ``size``.

    Token ids: the special tokens of :data:`SPECIAL_TOKENS` take ids 0..5 in that order (the word-level tokenizer of
    :func:`save_random_vlm` numbers them so). Patch geometry is each family's own: 14 px patches (Qwen2/2.5-VL) or
    16 px (Qwen3-VL), 2 x 2 spatial merge, 2 frames per temporal patch.
    """
    transformers = vlm._transformers()

    if family not in FAMILIES:
        raise ConfigError(f"unknown VLM family {family!r}; available: {list(FAMILIES)}")
    if size not in SIZES:
        raise ConfigError(f"unknown random VLM size {size!r}; available: {sorted(SIZES)}")
    s = SIZES[size]
    head_dim = s["hidden"] // s["heads"]
    # M-RoPE splits the rotary half of each head between (t, h, w); the real models use [16, 24, 24] of 64
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    text: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=s["hidden"],
        intermediate_size=s["mlp"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    vision_common: dict[str, Any] = dict(num_heads=s["vision_heads"], depth=s["vision_depth"], spatial_merge_size=2)
    if family == "qwen2_vl":
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": section}
        vision: dict[str, Any] = dict(
            vision_common, embed_dim=s["vision"], hidden_size=s["hidden"], mlp_ratio=2, patch_size=14
        )
        return transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
    if family == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": section}
        vision = dict(
            vision_common,
            hidden_size=s["vision"],
            intermediate_size=2 * s["vision"],
            out_hidden_size=s["hidden"],
            patch_size=14,
            fullatt_block_indexes=[s["vision_depth"] - 1],
        )
        return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    text.update(
        head_dim=head_dim, rope_parameters={"rope_type": "default", "mrope_section": section, "mrope_interleaved": True}
    )
    vision = dict(
        vision_common,
        hidden_size=s["vision"],
        intermediate_size=2 * s["vision"],
        out_hidden_size=s["hidden"],
        patch_size=16,
        num_position_embeddings=64,  # a square: an 8 x 8 grid, interpolated to every frame size
        deepstack_visual_indexes=list(range(s["vision_depth"])),
    )
    return transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)


def random_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over :data:`SPECIAL_TOKENS` (ids 0..5) and :data:`WORDS`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(dict.fromkeys(SPECIAL_TOKENS + WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def save_random_vlm(
    path: str | os.PathLike[str], family: str = "qwen2_vl", size: str = "tiny", *, seed: int = 0
) -> Path:
    """Write a randomly initialised model of ``family`` and its word-level tokenizer to ``path``.

    Loaded with :func:`arr_coc_stream.vlm.load_vlm` (the ``from_pretrained`` path the ``ask`` command takes), it
    exercises every step with real shapes; its answers mean nothing.

    Args:
        path: folder to write. family: a key of :data:`FAMILIES`. size: a key of :data:`SIZES`. seed: weights'
            seed (the global RNG is left as it was).

    Returns:
        ``path``.
    """
    transformers = vlm._transformers()

    tokenizer = random_tokenizer()
    config = random_vlm_config(family, size, vocab_size=len(tokenizer))
    cls = getattr(transformers, vlm.FAMILIES[family])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config).eval()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # the pixel statistics the real checkpoints ship (preprocessor_config.json): OpenAI CLIP's for Qwen2/2.5-VL,
    # 0.5 for Qwen3-VL; the PIL image processor, as the stock one wants torchvision
    stats = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3} if family == "qwen3_vl" else {}
    vision = config.vision_config
    transformers.Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size, merge_size=vision.spatial_merge_size, **stats
    ).save_pretrained(out)
    return out


@dataclass
class PrefillRow:
    """One row of :func:`prefill_table`.

    Attributes:
        label: what was kept (``"full"`` or ``"k=..."``).
        tokens: visual tokens the language model read. sequence: the whole prompt's length.
        share: ``tokens`` over the full clip's visual tokens, in (0, 1].
        prefill_ms: the language model's prefill (best of the repeats), the vision tower excluded.
    """

    label: str
    tokens: int
    sequence: int
    share: float
    prefill_ms: float


def prefill_table(
    family: str = "qwen2_vl",
    size: str = "bench",
    *,
    frames: int = 16,
    ks: tuple[int, ...] = (50, 100, 200),
    repeats: int = 1,
    threads: int | None = 1,
) -> list[PrefillRow]:
    """Time the prefill of a random model on the full and the pruned visual tokens of the default clip.

    The engine runs at its defaults (32 x 32 cells, so 1024 tokens per temporal token) on the first ``frames``
    frames of :func:`arr_coc_stream.synth.default_clip` with its query, once per ``k`` (200 is the default
    selection); the model is a random one of ``family`` at ``size`` (:data:`SIZES`), built in memory.

    Args:
        threads: torch intra-op threads while timing (the caller's count is restored); None leaves it.

    Returns:
        The ``full`` row, then one row per ``k``.
    """
    transformers = vlm._transformers()

    from . import run
    from .backends import intra_op_threads
    from .synth import default_clip

    path, query = default_clip()
    config = random_vlm_config(family, size, vocab_size=len(random_tokenizer()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForImageTextToText.from_config(config).eval()
    tokenizer = random_tokenizer()
    stats = transformers.Qwen2VLImageProcessorPil()  # only its pixel statistics are read
    clip = [f for _, f in zip(range(frames), _frames(path))]
    rows: list[PrefillRow] = []
    with intra_op_threads(threads):
        for k in ks:
            results = list(run(clip, query=query, k=k))
            inputs = vlm.build_inputs(model, tokenizer, query, clip, results, processor=stats)
            if not rows:
                full = inputs.tokens_full
                ms = vlm.prefill_ms(model, inputs.model_kwargs(pruned=False), repeats)
                rows.append(PrefillRow("full", full, int(inputs.full["input_ids"].shape[1]), 1.0, ms))
            ms = vlm.prefill_ms(model, inputs.model_kwargs(), repeats)
            rows.append(
                PrefillRow(f"k={k}", inputs.tokens_kept, int(inputs.input_ids.shape[1]), inputs.tokens_kept / full, ms)
            )
    return rows


def _frames(path: Path) -> Any:
    """The RGB frames of a video file, at its own size."""
    from .sources import VideoFileSource

    with VideoFileSource(path) as src:
        for frame in src:
            yield frame.rgb


def format_table(rows: list[PrefillRow]) -> str:
    """``rows`` as a Markdown table, the prefill's speed-up over the full row in the last column."""
    lines = [
        "| kept | visual tokens | share | prompt tokens | prefill ms | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.tokens} | {r.share:.1%} | {r.sequence} | {r.prefill_ms:.0f} | "
            f"{rows[0].prefill_ms / r.prefill_ms:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m arr_coc_stream.vlm_bench [--family F] [--frames N] [--threads T]``: print the prefill table."""
    import argparse
    import platform

    p = argparse.ArgumentParser(prog="python -m arr_coc_stream.vlm_bench", description=main.__doc__)
    p.add_argument("--family", choices=FAMILIES, default="qwen2_vl")
    p.add_argument("--size", choices=sorted(SIZES), default="bench")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="timed prefills per row, the best kept (default 1)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = prefill_table(args.family, args.size, frames=args.frames, repeats=args.repeats, threads=args.threads)
    s = SIZES[args.size]
    print(
        f"{args.family} random, {s['hidden']} hidden x {s['layers']} layers, {args.frames} frames of the default clip, "
        f"engine defaults (32 x 32 cells), torch threads {args.threads}, {platform.processor() or platform.machine()} "
        f"{os.cpu_count()} cores\n"
    )
    print(format_table(rows))
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
