"""Feed the engine's selection to a vision-language model: gather the selected tokens and their position ids.

A Qwen2-VL-style vision encoder turns an image into one token per 28 x 28 pixels (14 px patches merged 2 x 2,
``arr_coc_stream.result.PATCH_PX``). Resize the frame so that this token grid is the engine's cell grid, and the engine's
selected cells index the encoder's tokens directly; ``FrameResult.position_ids`` gives their (t, y, x) M-RoPE ids.
The encoder here is a small random stand-in (no download). With ``transformers`` installed, the ids are checked
against Qwen2-VL's own ``get_rope_index`` on a tiny random config.

Run:
    python examples/vlm_selection.py
"""

from __future__ import annotations

import inspect

import cv2
import numpy as np
import torch
from torch import nn

import arr_coc_stream as acs
from arr_coc_stream import synth
from arr_coc_stream.result import PATCH_PX
from arr_coc_stream.sources import IterableSource

PATCH, MERGE = 14, 2  # Qwen2-VL: 14 px patches, 2 x 2 merged into one LLM token of 28 px


class TinyVisionEncoder(nn.Module):
    """Random stand-in for a Qwen2-VL vision tower. [B, 3, 28 gh, 28 gw] -> [B, gh * gw, dim], raster order."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, PATCH, stride=PATCH)
        self.merge = nn.Linear(MERGE * MERGE * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch(x)  # [B, dim, 2 gh, 2 gw]
        b, d, h, w = p.shape
        p = p.reshape(b, d, h // MERGE, MERGE, w // MERGE, MERGE)  # [B, dim, gh, 2, gw, 2]
        p = p.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // MERGE) * (w // MERGE), MERGE * MERGE * d)
        return self.merge(p)  # [B, gh * gw, dim]


def qwen2vl_image_ids(grid: tuple[int, int], n_text: int) -> np.ndarray | None:
    """transformers' Qwen2-VL M-RoPE ids of an image on ``grid`` after ``n_text`` tokens: [3, gh * gw], or None."""
    try:
        from transformers import Qwen2VLConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel
    except ImportError:
        return None
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            bos_token_id=0,
            eos_token_id=1,
            rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(
            depth=1, embed_dim=16, hidden_size=16, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE
        ),
        image_token_id=60,
        vision_start_token_id=62,
        vision_end_token_id=63,
    )
    model = Qwen2VLModel(config).eval()
    gh, gw = grid
    ids = torch.tensor([[2] * (n_text - 1) + [62] + [60] * (gh * gw) + [63]])
    kwargs = {"image_grid_thw": torch.tensor([[1, MERGE * gh, MERGE * gw]])}
    if "mm_token_type_ids" in inspect.signature(model.get_rope_index).parameters:  # transformers >= 5
        kwargs["mm_token_type_ids"] = (ids == 60).int()
    pos, _ = model.get_rope_index(ids, **kwargs)
    return pos[:, 0, n_text : n_text + gh * gw].numpy()


def main() -> None:
    torch.manual_seed(0)
    clip = synth.moving_object("red", n_frames=12)
    result = acs.run(IterableSource(clip.frames, fps=clip.fps), query="red", k=64)[-1]
    gh, gw = result.grid
    px = PATCH_PX  # 28: one token of the encoder per engine cell

    image = cv2.resize(clip.frames[-1], (gw * px, gh * px), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0  # [1, 3, 28 gh, 28 gw]
    with torch.inference_mode():
        tokens = TinyVisionEncoder()(x)[0]  # [gh * gw, dim]

    # Keep the selected tokens in raster order, the order the language model reads an image in.
    order = np.argsort(result.selected)
    keep = result.selected[order]  # [n] row-major cell = token index
    kept = tokens[torch.from_numpy(keep)]  # [n, dim]
    n_text = 5  # e.g. "<|im_start|>user\n<|vision_start|>" before the image
    pos = result.position_ids(t=0, start=n_text)[:, order]  # [3, n]
    # Text after the image continues where the full image would have ended, pruned or not.
    next_text = n_text + max(gh, gw)

    print(f"kept {len(keep)} of {gh * gw} vision tokens ({len(keep) / (gh * gw):.1%}), shape {tuple(kept.shape)}")
    print(f"first position ids (t, y, x): {pos[:, :4].T.tolist()}; text after the image starts at {next_text}")
    reference = qwen2vl_image_ids((gh, gw), n_text)
    if reference is None:
        print("transformers not installed: skipped the check against Qwen2-VL's get_rope_index")
    else:
        np.testing.assert_array_equal(pos, reference[:, keep])
        print("position ids match transformers' Qwen2-VL get_rope_index")


if __name__ == "__main__":
    main()
