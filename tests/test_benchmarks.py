"""The benchmark scripts run end to end in their --quick mode, and their FLOP accounting is right."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
from motionmae.errors import UserError  # noqa: E402
from motionmae.models.flops import block_flops  # noqa: E402
import reproduce  # noqa: E402
import step  # noqa: E402


def _count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("kind", ["hf-videomae", "videomae", "motionmae-sha", "motionmae-ind", "motionmae-sha-dual"])
def test_analytic_flops_equal_flop_counter(kind, monkeypatch):
    """mae_step_flops (by hand: matmuls, conv, attention; backward 2x, no input grad for the clip) equals what
    torch's FlopCounterMode counts on one real forward + backward, for both implementations and all decoders."""
    from motionmae.models.vit import Attention

    monkeypatch.setattr(Attention, "fused_attn", False)  # FlopCounterMode does not count CPU SDPA kernels
    case = step.build_case(kind, "quick", "fp32", torch.device("cpu"))
    if kind == "hf-videomae":
        case.model.config._attn_implementation = "eager"
        for m in case.model.modules():
            if hasattr(m, "config"):
                m.config._attn_implementation = "eager"
    counted = _count_flops(case.step)
    expected = step.step_flops(case.cfg, case.mask, step.SETTINGS["quick"]["batch"], case.transformers, case.dec_mask)
    assert counted == expected


@pytest.mark.parametrize("decoder,decoder_ratio", [("sha", 0.0), ("ind", 0.0), ("sha", 0.5), ("ind", 0.3)])
def test_flop_model_follows_the_targets_and_the_decoder_mlp(decoder, decoder_ratio, monkeypatch):
    """Three targets of different widths (appearance, gray motion, HOG), one decoder trunk per target with `ind`,
    a decoder MLP ratio other than the encoder's, dual masking: models/flops.py still equals FlopCounterMode."""
    from motionmae.config import load_config
    from motionmae.models.flops import pretrain_step_flops
    from motionmae.models.pretrain import PretrainModel
    from motionmae.models.vit import Attention

    monkeypatch.setattr(Attention, "fused_attn", False)
    cfg = load_config("motionmae-sha-tiny", [
        "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.num_frames=4", "model.img_size=32",
        "model.patch_size=8", "model.decoder_embed_dim=16", "model.decoder_depth=2", "model.decoder_num_heads=2",
        "model.decoder_mlp_ratio=2.0", f"model.decoder={decoder}", "objective.targets=[appearance,motion,hog]",
        "objective.motion_color=gray", "mask.ratio=0.75", f"mask.decoder_ratio={decoder_ratio}"])
    model = PretrainModel(cfg).train()
    x = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    mask, dec_mask = step.make_masks(cfg, 3)
    assert (dec_mask is not None) == (decoder_ratio > 0)
    counted = _count_flops(lambda: model(x, mask, dec_mask)["loss"].backward())
    # computing the targets is free by the convention (HOG's gradient filters are a conv the counter sees)
    decoded = mask if dec_mask is None else mask & ~dec_mask
    ids_masked = decoded.nonzero()[:, 1].reshape(3, -1)
    targets = _count_flops(lambda: model.compute_targets(x, ids_masked))
    assert targets > 0
    assert counted - targets == pretrain_step_flops(cfg, 3)["total"]


def test_block_flops_by_hand():
    # 10 tokens, width 8, mlp 4x: linear 2*10*8*(24+8+64) = 15360; attention 4*10*10*8 = 3200
    assert block_flops(10, 8) == 15360 + 3200


def test_step_quick_end_to_end(tmp_path):
    out = tmp_path / "step.json"
    assert step.main(["--quick", "--dtypes", "fp32", "--clock", "cpu", "--threads", "1", "--no-memory", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"] for r in rows] == list(step.CASES)
    for r in rows:
        assert len(r["times"]) == step.SETTINGS["quick"]["repeats"]
        assert r["clips_per_s"] > 0 and math.isfinite(r["clips_per_s"])
    flops = {r["case"]: r["gflop_per_step"] for r in rows}
    # same sizes and visible count; ours embeds only the visible cubes; the motion head / second decoder add on top;
    # dual masking takes decoder work away
    assert flops["videomae"] < flops["hf-videomae"]
    assert flops["videomae"] < flops["motionmae-sha"] < flops["motionmae-ind"]
    assert flops["videomae-dual"] < flops["videomae"] and flops["motionmae-sha-dual"] < flops["motionmae-sha"]


def test_peak_memory_subprocess():
    mem = step.peak_memory("motionmae-sha", "quick", "fp32", "cpu")
    assert mem["rss_peak_mib"] > 10  # a python process with torch loaded
    assert 0 <= mem["rss_growth_mib"] <= mem["rss_peak_mib"]


def test_replace_section_round_trip(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# Benchmarks\n\n## Loader\nkeep me\n")
    common.replace_section(doc, "<!-- a -->", "<!-- b -->", "first")
    common.replace_section(doc, "<!-- a -->", "<!-- b -->", "second")
    text = doc.read_text()
    assert "keep me" in text and "second" in text and "first" not in text
    assert text.count("<!-- a -->") == 1 and text.count("<!-- b -->") == 1


def test_ledger_shared_by_two_processes_and_counts_children(tmp_path):
    """Two ledgers on one file (two study processes) add up instead of overwriting each other, and CPU spent in a
    child process (the data-loader workers) is charged."""
    import subprocess

    path = tmp_path / "cost.json"
    a, b = reproduce.Ledger(path), reproduce.Ledger(path)
    with a.charge("pretrain/x"):
        pass
    with b.charge("probe/y"):
        subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"], check=True)
    with a.charge("pretrain/x"):
        pass
    data = json.loads(path.read_text())
    assert set(data) == {"pretrain/x", "probe/y"} and data["probe/y"] >= 0.3
    assert reproduce.Ledger(path).hours("probe/") == data["probe/y"] / 3600


def test_reproduce_quick_end_to_end(tmp_path):
    assert reproduce.main(["--quick", "--out", str(tmp_path)]) == 0
    out = tmp_path / "quick"
    res = json.loads((out / "results.json").read_text())["results"]
    assert set(res) == set(reproduce.KINDS) | {reproduce.RANDOM}
    (base,) = res.pop(reproduce.RANDOM)  # probed at step 0 and fine-tuned from scratch
    assert list(base["probes"]) == ["0"] and 0.0 <= base["finetune_top1"] <= 1.0
    for runs in res.values():
        (r,) = runs  # one seed
        steps = sorted(int(s) for s in r["probes"])
        assert steps == [0, reproduce.QUICK.steps]
        for cols in r["probes"].values():
            assert set(cols) == set(reproduce.COLUMNS)
            assert all(0.0 <= v["linear"] <= 1.0 and 0.0 <= v["knn"] <= 1.0 for v in cols.values())
        assert 0.0 <= r["finetune_top1"] <= 1.0
        assert any("loss_appearance" in m for m in r["metrics"])
    text = (out / "RESULTS.md").read_text()
    for name in reproduce.KINDS:
        assert f"| {name} |" in text
    # the per-seed rows end with both held-out ratios; videomae has no motion target, so no motion ratio
    sha, vmae = res["motionmae-sha"][0]["heldout"], res["videomae"][0]["heldout"]
    assert f"| {sha['ratio_appearance']:.3f} | {sha['ratio_motion']:.3f} |" in text
    assert f"| {vmae['ratio_appearance']:.3f} | - |" in text and "ratio_motion" not in vmae
    # fine-tuning sees the clips pretraining saw (its own default stride would loop the 16-frame videos)
    pre, ft = (yaml.safe_load((out / d / "videomae-seed0" / "config.yaml").read_text())["data"] for d in ("runs", "finetune"))
    assert ft["sampling_rate"] == pre["sampling_rate"] != 4 and ft["num_frames"] == pre["num_frames"]
    for png in ("results_loss.png", "results_probe_motion.png", "results_probe_class.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reproduce_ablations_split_over_invocations_are_all_reported(tmp_path):
    """Ablations run by separate invocations with the same seeds (e.g. side by side on two cores) each keep their
    results: the report reads every run back, not just the last invocation's."""
    common_args = ["--quick", "--out", str(tmp_path), "--only", "motionmae-sha", "--no-baseline", "--ablation-seeds", "0",
                   "--style", "glyph_texture_moves=1"]
    for ablation in ("sha gap 2", "sha abs motion"):
        assert reproduce.main([*common_args, "--ablation", ablation]) == 0
    (tmp_path / "quick" / "results.json").unlink()  # what concurrent invocations leave: only their per-run files
    assert reproduce.main([*common_args, "--ablation", "sha gap 2,sha abs motion", "--report-only"]) == 0
    text = (tmp_path / "quick" / "RESULTS.md").read_text()
    assert "| sha gap 2 |" in text and "| sha abs motion |" in text
    # the page's command trains and reports (finished runs are read back), so it leaves --report-only out
    assert "--ablation 'sha gap 2,sha abs motion'" in text and "--report-only" not in text
    (data,) = (tmp_path / "quick").glob("data-*")  # --style chose the data, and its folder says so
    assert "texture-moves1" in data.name and json.loads((data / "labels.json").read_text())["style"]["glyph_texture_moves"] == 1


def test_cpu_bf16_attention_takes_explicit_path_and_matches_fp32_sdpa():
    """Perf choice in models/vit.py: on CPU, bf16 attention avoids the slow SDPA kernel; the result stays
    within bf16 rounding of fp32 SDPA, and fp32 still uses SDPA."""
    from motionmae.models.vit import Attention

    assert Attention.use_sdpa(torch.zeros(1, dtype=torch.float32))
    assert not Attention.use_sdpa(torch.zeros(1, dtype=torch.bfloat16))
    torch.manual_seed(0)
    attn = Attention(32, 4)
    torch.nn.init.normal_(attn.q_bias, std=0.5)
    torch.nn.init.normal_(attn.v_bias, std=0.5)
    x = torch.randn(2, 50, 32)
    ref = attn(x)  # fp32: SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attn(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=3e-2, rtol=3e-2)
    low.float().sum().backward()
    assert attn.qkv.weight.grad is not None and torch.isfinite(attn.qkv.weight.grad).all()


def test_patchify_with_index_equals_gather_of_full_patchify():
    """Perf edit in objective/targets.py: reading the masked cubes straight from the clip gives exactly the
    rows of the full patchified grid (tubelet 2, non-square token grid, unsorted indices)."""
    from motionmae.objective.tokens import patchify

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 16, 24, generator=g)
    n = 4 * 4 * 6
    index = torch.rand(3, n, generator=g).argsort(1)[:, :70]
    full = patchify(x, 2, 4)
    expected = torch.gather(full, 1, index[..., None].expand(-1, -1, full.shape[-1]))
    assert torch.equal(patchify(x, 2, 4, index), expected)


@pytest.mark.parametrize("kind", ["videomae", "motionmae-ind"])
def test_step0_probe_is_the_encoder_pretraining_starts_from(kind):
    """reproduce.py probes `random_encoder(cfg.model, seed)` as step 0 of every run: that is only right if the
    pretraining model, seeded the same way (engine/pretrain.py), builds exactly that encoder."""
    from motionmae.eval.probe import random_encoder
    from motionmae.models.pretrain import PretrainModel

    cfg = step.build_cfg(kind, "quick")
    torch.manual_seed(3)
    ours = PretrainModel(cfg).encoder.state_dict()
    ref = random_encoder(cfg.model, 3).state_dict()
    assert ours.keys() == ref.keys()
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


# ----------------------------------------------------------------------------------------------
# ViT-g and the memory calculator (benchmarks/memory.py)


def test_giant_preset_is_vit_g14():
    # VideoMAE v2's ViT-g/14: width 1408, depth 40, 16 heads, MLP 6144 (48/11, not an integer ratio), patch 14
    from motionmae.config import load_config
    from motionmae.models.vit import build_encoder

    cfg = load_config("motionmae-sha-giant")
    m = cfg.model
    assert m.dims() == (1408, 40, 16) and m.patch_size == 14 and m.grid() == (8, 16, 16)
    with torch.device("meta"):
        enc = build_encoder(m)
    assert enc.blocks[0].mlp.fc1.out_features == 6144
    d, h = 1408, 6144
    block = 4 * d * d + 2 * h * d + h + d + 2 * d + d + 4 * d  # qkv + proj + fc1 + fc2 weights; biases; two LayerNorms
    embed = 3 * 2 * 14 * 14 * d + d
    assert sum(p.numel() for p in enc.parameters()) == 40 * block + embed + 2 * d == 1_011_610_752
    with pytest.raises(UserError, match="ViT-g/14, whose MLP is 6144 wide"):
        load_config("", ["model.size=giant"])


def test_memory_calculator_by_hand_and_against_saved_tensors():
    import memory

    from motionmae.config import load_config
    from motionmae.models.vit import Block

    cfg = load_config("motionmae-sha-small", ["model.num_frames=4", "model.img_size=32", "model.patch_size=16"])
    p = memory.param_counts(cfg)
    ddp, fsdp = memory.estimate(cfg, 2, "ddp", 4, True, False), memory.estimate(cfg, 2, "fsdp", 4, True, True)
    assert ddp["weights"] == ddp["ddp buckets"] == 4 * p["total"] and ddp["adamw"] == 8 * p["total"]
    assert fsdp["weights"] == p["total"] and fsdp["adamw"] == 2 * p["total"] and "ddp buckets" not in fsdp
    assert fsdp["activations"] < ddp["activations"]  # checkpointing
    # a block's activations: what autograd really saves (not the weights), fp32 with fused attention and bf16 without
    torch.manual_seed(0)
    blk = Block(64, 4, 4.0, True, 0.0, 1e-6)
    weights = {tuple(q.shape) for q in blk.parameters()} | {tuple(q.shape[::-1]) for q in blk.parameters()}
    params = {q.untyped_storage().data_ptr() for q in blk.parameters()}

    def saved(fn) -> int:
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params and not (t.dtype == torch.bfloat16 and tuple(t.shape) in weights):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(seen.values())

    x = torch.randn(2, 50, 64, requires_grad=True)
    assert saved(lambda: blk(x)) == pytest.approx(2 * memory.block_activation_bytes(50, 64, 256, 4, False, True), rel=0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU bf16: the explicit attention path, probabilities saved
        assert saved(lambda: blk(x)) == pytest.approx(2 * memory.block_activation_bytes(50, 64, 256, 4, True, False), rel=0.02)


def test_malloc_counts_follow_a_tensor():
    # the CPU check's evidence for allocator retention (memory.py --trace): glibc's bytes in use, freed but kept
    import ctypes

    import memory

    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc < 2.33: no mallinfo2")
    before = memory._malloc_bytes(libc)[0]
    t = torch.ones(2**22)  # 16 MiB
    during = memory._malloc_bytes(libc)[0]
    del t
    after = memory._malloc_bytes(libc)[0]
    assert 2**24 <= during - before < 2**24 + 2**20 and abs(after - before) < 2**20


def test_vos_sets_pairs_rows_by_seed(tmp_path):
    """benchmarks/vos_sets.py on tiny sets: both scenes are written (apart), every (row, scene, size) is measured,
    and the same encoder under two names gives the same J&F, so its paired difference row is exactly zero."""
    import vos_sets
    from motionmae.config import ModelConfig
    from motionmae.eval.probe import random_encoder

    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4, img_size=32)
    rows = {vos_sets.RANDOM: {s: random_encoder(cfg, s) for s in (0, 1)}}
    rows["same"] = dict(rows[vos_sets.RANDOM])
    res = vos_sets.measure(tmp_path, rows, [32], reproduce.Ledger(tmp_path / "cost.json"), sequences=1, height=32)
    assert sorted(p.name for p in tmp_path.glob("vos-*")) == ["vos-1x32", "vos-1x32-sprites"]
    names = [*rows, vos_sets.COPY, vos_sets.PIXELS]
    assert set(res) == {(r, scene, 32) for r in names for scene in vos_sets.SCENES}
    for key, per_seed in res.items():
        if key[0] in (vos_sets.COPY, vos_sets.PIXELS):  # no encoder: one value, given to every seed
            assert set(per_seed) == {0, 1} and per_seed[0] == per_seed[1]
            continue
        assert set(per_seed) == {0, 1} and all(0.0 <= v <= 1.0 for v in per_seed.values())
        assert per_seed == res[(vos_sets.RANDOM, *key[1:])]
    text = vos_sets.table(res, list(rows), [32])
    assert "| same - random init, per seed | +0.000 ± 0.000 (+0.000 +0.000) | +0.000 ± 0.000 (+0.000 +0.000) |" in text
    copies = [res[(vos_sets.COPY, scene, 32)][0] for scene in vos_sets.SCENES]
    assert f"| {vos_sets.COPY} | {copies[0]:.3f} | {copies[1]:.3f} |" in text
    # the copy reference copies: every propagated frame of the sequence is the same mask
    pngs = sorted((tmp_path / "vos" / "glyphs-32" / reproduce.slug(vos_sets.COPY)).rglob("*.png"))
    assert len(pngs) == 24
    masks = [np.array(Image.open(p)) for p in pngs[1:]]
    assert all((m == masks[0]).all() for m in masks) and masks[0].any()


def test_vos_reference_features_by_hand():
    """The references' features, worked out by hand: one-hot places; a pure red 8x16 frame with 4 px patches is
    (1, 2, 4) patches of 16 ones, 32 zeros and (row, column) x position / grid height."""
    import vos_sets

    frames = np.zeros((3, 8, 16, 3), np.uint8)
    frames[..., 0] = 255
    f = vos_sets.PositionOnly(size=0, patch=4)(frames)
    assert f.shape == (3, 2, 4, 8) and torch.equal(f[2].reshape(8, 8), torch.eye(8))
    f = vos_sets.PixelsAndPosition(size=0, patch=4, position=4.0)(frames)
    assert f.shape == (3, 2, 4, 48 + 2)
    assert torch.equal(f[..., :16], torch.ones(3, 2, 4, 16)) and not f[..., 16:48].any()
    assert f[1, 1, 3, 48:].tolist() == [2.0, 6.0] and f[0, 0, 1, 48:].tolist() == [0.0, 2.0]
    # resized as the encoders' frames are: a 16x32 frame at size 8 is the same grid
    assert torch.equal(vos_sets.PixelsAndPosition(size=8)(np.repeat(np.repeat(frames, 2, 1), 2, 2)), f)
