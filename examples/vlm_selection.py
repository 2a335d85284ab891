"""Feed the engine's selection to a vision-language model: only the selected visual tokens, at their own positions.

A Qwen2-VL-family model turns each pair of frames into one token per ``patch_size * spatial_merge_size`` pixels
(28 for Qwen2/2.5-VL). ``arr_coc_stream.vlm.engine_options`` makes the engine's cell grid that token grid, so a
selected cell is a token; ``vlm.build_inputs`` runs the vision tower, keeps the selected cells' tokens and gives
them the multimodal RoPE ids they have in the full sequence (the model's own ``get_rope_index``); the model then
reads the pruned sequence through its ordinary ``forward`` and ``generate``. The model here is a tiny random
Qwen2-VL written to a temporary folder (no download); name a real one with ``--vlm PATH`` (a folder written by
``save_pretrained``). Needs the ``vlm`` extra (``pip install 'arr_coc_stream[vlm]'``).

Run:
    python examples/vlm_selection.py [--vlm PATH]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import arr_coc_stream as acs
from arr_coc_stream import synth, vlm
from arr_coc_stream.vlm_bench import save_random_vlm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", help="a Qwen2-VL-family folder (default: a tiny random Qwen2-VL)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = vlm.load_vlm(args.vlm or save_random_vlm(tmp, "qwen2_vl"))
        stats = vlm.pixel_stats(model)  # from the folder's preprocessor config, before the folder goes
    clip = synth.moving_object("red", n_frames=8)
    options = {**vlm.engine_options(model, clip.frames[0].shape[:2]), "k": 12}
    results = acs.run(clip.frames, query="red", **options)
    question = "where is the red ball ?"
    inputs = vlm.build_inputs(model, tokenizer, question, clip.frames, results, processor=stats)

    gh, gw = inputs.grid
    print(f"engine grid {gh} x {gw} = the model's {vlm.geometry(model).token_px} px token grid")
    print(
        f"kept {inputs.tokens_kept} of {inputs.tokens_full} visual tokens ({inputs.tokens_kept / inputs.tokens_full:.1%})"
    )
    # every kept token keeps the (t, h, w) id it has in the full sequence: the pruned ids are a subset, not renumbered
    assert torch.equal(inputs.position_ids, inputs.full_position_ids[:, :, inputs.sequence_keep])
    video = inputs.input_ids[0] == model.config.video_token_id
    print(f"first kept video tokens' (t, h, w) ids: {inputs.position_ids[:, 0, video][:, :4].T.tolist()}")
    with torch.inference_mode():
        out = model.generate(**inputs.model_kwargs(), max_new_tokens=5, do_sample=False)
    print("answer:", tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True))


if __name__ == "__main__":
    main()
