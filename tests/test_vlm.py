"""arr_coc_stream.vlm: a Qwen2-VL-family model fed only the selected visual tokens (issue 18).

Tiny random models of the three families (:func:`arr_coc_stream.vlm_bench.save_random_vlm`: a few hundred thousand
parameters and a word-level ``tokenizers`` tokenizer, saved and loaded back from a folder as the ``ask`` command
does). Parity: every token kept equals the stock model on the stock inputs; tokens pruned equal the stock model on
the full sequence with the dropped tokens masked out of attention at the same position ids. The patch layout is
checked against transformers' own patching code, the kept tokens against the selected cells.
"""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from arr_coc_stream import errors, run, synth

transformers = pytest.importorskip("transformers")
from arr_coc_stream import vlm, vlm_bench  # noqa: E402  (after the skip: vlm needs transformers)

FAMILIES = list(vlm_bench.FAMILIES)
QUESTION = "where is the red ball ?"
ATOL = 1e-5


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    folder = vlm_bench.save_random_vlm(tmp_path_factory.mktemp(request.param), request.param)
    return vlm.load_vlm(folder)


@pytest.fixture(scope="module")
def clip() -> synth.Clip:
    return synth.moving_object("red", n_frames=5)  # odd: the last temporal token repeats its frame


def _results(model, clip: synth.Clip, **overrides) -> list:
    options = {**vlm.engine_options(model, clip.frames[0].shape[:2]), **overrides}
    return list(run(clip.frames, query="red", **options))


def test_engine_grid_is_the_models_token_grid(loaded: tuple) -> None:
    model, _ = loaded
    geo = vlm.geometry(model)
    vision = model.config.vision_config
    assert geo.token_px == vision.patch_size * vision.spatial_merge_size  # 28 (Qwen2/2.5-VL), 32 (Qwen3-VL)
    options = vlm.engine_options(model, (720, 1280))
    gh, gw = options["grid"]
    assert gh * gw <= 1024 and abs(gw / gh - 1280 / 720) < 0.25
    assert (gh * options["cell_px"]) % 32 == 0 and (gw * options["cell_px"]) % 32 == 0
    assert vlm.engine_options(model, (4 * geo.token_px, 8 * geo.token_px))["grid"] == (4, 8)


def test_every_token_kept_equals_the_stock_model(loaded: tuple, clip: synth.Clip) -> None:
    model, tokenizer = loaded
    results = _results(model, clip, relevance_floor=0.0, explore_share=0.0)  # k = every cell: all selected
    inputs = vlm.build_inputs(model, tokenizer, QUESTION, clip.frames, results)
    assert inputs.tokens_kept == inputs.tokens_full == 3 * 64  # 5 frames -> 3 temporal tokens of 8 x 8
    with torch.inference_mode():
        stock = model(**inputs.full).logits  # the stock path: its own vision tower and rope index
        ours = model(**inputs.model_kwargs()).logits
    torch.testing.assert_close(ours, stock, atol=ATOL, rtol=0)


def test_pruned_equals_the_masked_full_sequence(loaded: tuple, clip: synth.Clip) -> None:
    model, tokenizer = loaded
    results = _results(model, clip, k=10)
    inputs = vlm.build_inputs(model, tokenizer, QUESTION, clip.frames, results)
    assert 0 < inputs.tokens_kept < inputs.tokens_full
    keep = inputs.sequence_keep
    rope = {k: v for k, v in inputs.full.items() if k != "pixel_values_videos"}
    with torch.inference_mode():
        positions, _ = model.model.get_rope_index(**rope)  # the reference's own ids of the full sequence
        reference = model(**inputs.full, attention_mask=keep[None].long(), position_ids=positions).logits
        ours = model(**inputs.model_kwargs()).logits
    torch.testing.assert_close(inputs.position_ids, positions[:, :, keep], atol=0, rtol=0)  # not renumbered
    torch.testing.assert_close(ours, reference[:, keep], atol=ATOL, rtol=0)


def test_generate_works_on_the_pruned_and_equals_stock_unpruned(loaded: tuple, clip: synth.Clip) -> None:
    model, tokenizer = loaded
    every = vlm.build_inputs(model, tokenizer, QUESTION, clip.frames, _results(model, clip, relevance_floor=0.0))
    greedy = {"max_new_tokens": 3, "do_sample": False}
    with torch.inference_mode():
        stock = model.generate(**every.full, **greedy)
        ours = model.generate(**every.model_kwargs(), **greedy)
    assert torch.equal(ours, stock)
    out = vlm.answer(model, tokenizer, QUESTION, clip.frames, _results(model, clip, k=10), max_new_tokens=3)
    with torch.inference_mode():
        first = model(**out.inputs.model_kwargs()).logits[0, -1].argmax()
    assert len(out.token_ids) >= 1 and out.token_ids[0] == first and isinstance(out.text, str)
    assert out.tokens_kept < out.tokens_full


def test_a_query_on_one_corner_keeps_that_corner(loaded: tuple) -> None:
    model, tokenizer = loaded
    px = vlm.geometry(model).token_px
    frames = [np.full((8 * px, 8 * px, 3), 90, np.uint8) for _ in range(4)]
    for f in frames:
        f[: 2 * px, : 2 * px] = (255, 0, 0)  # a red 2 x 2-cell square in the top-left corner
    options = {**vlm.engine_options(model, frames[0].shape[:2]), "k": 4, "max_foveal": 4, "explore_share": 0.0}
    results = list(run(frames, query="red", **options))
    inputs = vlm.build_inputs(model, tokenizer, "red", frames, results)
    corner = {0, 1, 8, 9}  # cells (0, 0), (0, 1), (1, 0), (1, 1) on the 8 x 8 grid
    assert all(set(r.selected.tolist()) == corner for r in results)
    assert inputs.keep.tolist() == sorted(t * 64 + c for t in range(2) for c in corner)
    features = inputs.full_video.pooler_output[0]
    torch.testing.assert_close(inputs.video.pooler_output[0], features[inputs.keep], atol=0, rtol=0)
    # (h, w) ids relative to each temporal token's first (row 0, col 0) token are the cells' (row, col)
    full = inputs.full_position_ids[:, 0, inputs.full["mm_token_type_ids"][0] == 2].reshape(3, 2, 64)
    relative = (full[1:] - full[1:, :, :1]).reshape(2, -1)[:, inputs.keep]  # [2, 8]
    cells = inputs.keep % 64
    assert relative.tolist() == [(cells // 8).tolist(), (cells % 8).tolist()]
    kept = inputs.position_ids[:, 0, inputs.input_ids[0] == model.config.video_token_id]  # [3, 8]
    torch.testing.assert_close(kept, full.reshape(3, -1)[:, inputs.keep], atol=0, rtol=0)


def _transformers_video_patchify(module: str):
    """transformers' own video ``patchify`` (pure torch), lifted from its source: the module imports torchvision,
    which has no CPU build here."""
    path = Path(transformers.__file__).parent / "models" / module.removeprefix("video_processing_") / f"{module}.py"
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("VideoProcessor"))
    func = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "patchify")
    namespace = {"torch": torch}
    exec(compile(ast.Module([func], []), str(path), "exec"), namespace)
    return namespace["patchify"]


@pytest.mark.parametrize("module", ["video_processing_qwen2_vl", "video_processing_qwen3_vl"])
def test_patch_layout_matches_transformers(module: str) -> None:
    patch = 16 if "qwen3" in module else 14
    geo = vlm.VisionGeometry("qwen2_vl", patch, 2, 2)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (3, 2 * geo.token_px, 3 * geo.token_px, 3), dtype=np.uint8)  # 3 frames: padded
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    ours, thw = vlm.patchify(video, geo, mean, std)
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    theirs, t, h, w = _transformers_video_patchify(module)(None, x[None], patch, 2, 2)
    assert thw.tolist() == [[t, h, w]] == [[2, 4, 6]]
    torch.testing.assert_close(ours, theirs[0], atol=0, rtol=0)
    # a still image through the PIL image processor (which loads here): the temporal patch repeats the frame
    image = transformers.Qwen2VLImageProcessorPil().patchify(x[0].numpy(), patch, 2, 2)[0]
    still, _ = vlm.patchify(video[:1], geo, mean, std)
    np.testing.assert_allclose(still.numpy(), image, atol=1e-6)


def test_ask_command_end_to_end(tmp_path: Path) -> None:
    from arr_coc_stream.cli import main

    folder = vlm_bench.save_random_vlm(tmp_path / "model", "qwen2_vl")
    video = synth.write_clip(synth.moving_object("red", n_frames=6), tmp_path / "red.mp4")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.warns(Warning):  # the query's unknown words: a QueryWarning
        status = main(["ask", str(video), QUESTION, "--vlm", str(folder), "--frames", "4", "--k", "8"])
    lines = out.getvalue().splitlines()
    assert status == 0, lines
    assert lines[1].startswith("visual tokens kept / full: ") and lines[2].startswith("prefill ms pruned / full: ")
    kept, full = (int(v) for v in lines[1].split(": ")[1].split(" (")[0].split(" / "))
    assert 0 < kept < full == 2 * 64  # 4 frames -> 2 temporal tokens of 8 x 8


def test_bad_input_is_named(loaded: tuple, clip: synth.Clip, tmp_path: Path) -> None:
    model, tokenizer = loaded
    clip_config = transformers.CLIPConfig()
    with pytest.raises(errors.ModelError, match="CLIPConfig.*'clip'"):
        vlm.geometry(clip_config)
    with pytest.raises(errors.ModelError, match="Linear"):
        vlm.build_inputs(torch.nn.Linear(2, 2), tokenizer, QUESTION, clip.frames, [])
    clip_config.save_pretrained(tmp_path)
    with pytest.raises(errors.ModelError, match="model_type 'clip'"):
        vlm.load_vlm(tmp_path)
    with pytest.raises(errors.ConfigError, match=r"frame_size \(10, 40000\)"):
        vlm.engine_options(model, (10, 40000))
    with pytest.raises(errors.ConfigError, match=r"max_cells=8"):
        vlm.engine_options(model, (256, 256), max_cells=8)
    mixed = _results(model, clip)[:2] + list(run(clip.frames[:1], query="red", grid=(4, 4), k=4, max_foveal=4))
    with pytest.raises(errors.ConfigError, match=r"grids \[\(4, 4\), \(8, 8\)\]"):
        vlm.build_inputs(model, tokenizer, QUESTION, clip.frames[:3], mixed)
    assert issubclass(errors.ModelError, ValueError) and issubclass(errors.ConfigError, ValueError)


# A chat template as the real checkpoints' render a video: inside vision_start / vision_end, the question after it
TEMPLATE = (
    "{% for m in messages %}where {% for c in m['content'] %}{% if c['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %} yes{% endif %}"
)


def test_a_chat_template_frames_the_video(loaded: tuple, clip: synth.Clip) -> None:
    model, tokenizer = loaded
    templated = tokenizer.__class__.from_pretrained(model.name_or_path)
    templated.chat_template = TEMPLATE
    results = _results(model, clip, k=10)
    inputs = vlm.build_inputs(model, templated, "red ?", clip.frames, results)
    ids = inputs.full["input_ids"][0].tolist()
    words = templated.convert_ids_to_tokens(ids)
    assert words[0] == "where" and words[-3:] == ["red", "?", "yes"]
    blocks = 3 if model.config.model_type == "qwen3_vl" else 1  # Qwen3-VL: one block per temporal token
    assert words.count("<|vision_start|>") == words.count("<|vision_end|>") == blocks
    with torch.inference_mode():
        mask = inputs.sequence_keep[None].long()
        reference = model(**inputs.full, attention_mask=mask, position_ids=inputs.full_position_ids).logits
        ours = model(**inputs.model_kwargs()).logits
    torch.testing.assert_close(ours, reference[:, inputs.sequence_keep], atol=ATOL, rtol=0)
