"""`motionmae reproduce`: a recipe end to end on a tiny synthetic stand-in (the recipe's presets with tiny model and
run overrides): the plan and its estimate first, every stage, results and a model card; a stage stopped by SIGTERM
resumes, finished stages are skipped, a finished stage whose config changed is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from motionmae.cli import main
from motionmae.data.synthetic import make_dataset
from motionmae.data.synthetic_vos import make_vos_dataset

# the recipe's presets at a tiny size: every stage shares these; the step counts are per stage
TINY = ["model.size=tiny", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "model.num_frames=4", "model.img_size=32",
        "model.patch_size=16", "model.grad_checkpointing=false", "data.sampling_rate=2", "data.short_side=32",
        "data.num_workers=0", "train.amp=none", "train.device=cpu", "train.batch_size=4", "train.warmup_steps=1",
        "train.log_every=1", "train.save_every=1", "train.viz_every=-1", "train.loggers=[jsonl]",
        "pretrain.train.max_steps=12", "finetune.train.max_steps=3", "finetune.finetune.eval_batch_size=2"]


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """VideoMAE's list layout: train.csv and val.csv (no test.csv: val.csv is the test list, as in VideoMAE's)."""
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, num_train=8, num_val=4, frames=8, size=32, workers=1, glyphs="shapes")
    return root


def test_reproduce_ucf101_end_to_end(stand_in, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["reproduce", "--recipe", "ucf101", "--data-root", str(stand_in), "--out", str(out), *TINY]
    # a first run stopped by SIGTERM during pretraining: exit 143, the stage not done, its checkpoint kept
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "motionmae.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    last = out / "pretrain" / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    printed, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, printed
    assert printed.index("GPU-hours (estimate)") < printed.index("== pretrain")  # the plan comes first
    assert "312 TFLOP/s GPU peak x 0.3 MFU" in printed and "pretrain stopped" in printed
    assert not (out / "pretrain" / "done.json").exists()

    # rerun: the plan says pretraining resumes; it continues from its checkpoint, then the other stages
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "pretrain  12 steps x 4 videos x 1 clip = 48 clips" in printed
    assert "resume" in printed.split("== pretrain")[0] and "resumed from" in printed
    for stage in ("pretrain", "finetune", "test"):
        assert (out / stage / "done.json").exists(), stage
    res = json.loads((out / "results.json").read_text())
    test = res["stages"]["test"]["result"]
    assert test["views"] == {"temporal": 5, "spatial": 3} and test["num_samples"] == 4  # UCF101's 5x3 views, val.csv
    assert 0.0 <= test["top1"] <= test["top5"] <= 1.0
    assert res["stages"]["pretrain"]["result"]["step"] == 12 and res["stages"]["finetune"]["result"]["step"] == 3
    assert res["stages"]["pretrain"]["estimated_gpu_hours"] > 0
    # each stage ran the recipe's preset under the tiny overrides
    ft = json.loads((out / "finetune" / "done.json").read_text())["config"]
    assert (ft["finetune"]["fc_drop_rate"], ft["finetune"]["layer_decay"], ft["data"]["num_samples"]) == (0.5, 0.7, 2)
    assert json.loads((out / "pretrain" / "done.json").read_text())["config"]["mask"]["ratio"] == 0.9
    card = (out / "README.md").read_text()
    assert card.startswith("# MotionMAE on UCF101 (split 1): `motionmae reproduce --recipe ucf101`")
    assert "| top-1 |" in card and "`model.embed_dim=32`" in card and "91.3" in card
    assert (out / "results.md").read_text().count("|") > 9

    # again: every stage is done and skipped
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "== " not in printed and printed.count(" done") >= 3
    # a finished stage whose config changed is refused, naming the key
    assert main([*args, "finetune.finetune.mixup=0.5"]) == 2
    assert "finetune.mixup" in capsys.readouterr().err


def test_reproduce_davis_pretrains_then_segments(stand_in, tmp_path, capsys):
    davis = make_vos_dataset(tmp_path / "davis", num_sequences=2, num_frames=5, height=48, width=64, seed=1)
    out = tmp_path / "out"
    args = ["reproduce", "--recipe", "davis", "--data-root", str(stand_in), "--davis-root", str(davis), "--out", str(out),
            *TINY, "vos.size=32", "vos.device=cpu", "vos.amp=none"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "vos       2 sequences, 10 frames at 32 px, frozen encoder" in printed
    res = json.loads((out / "results.json").read_text())
    assert 0.0 <= res["stages"]["vos"]["result"]["global"]["J&F-Mean"] <= 1.0
    assert "| J&F-Mean |" in (out / "README.md").read_text()
    assert (out / "vos" / "synth000").is_dir()  # the predicted masks, DAVIS layout


def test_reproduce_names_what_is_missing(tmp_path, capsys):
    assert main(["reproduce", "--recipe", "ssv2", "--out", str(tmp_path)]) == 2
    assert "the train list is missing: pass --data-root DIR" in capsys.readouterr().err
    assert main(["reproduce", "--recipe", "ssv2", "--dry-run", "trian.epochs=3"]) == 2
    assert "no stage has a section 'trian'" in capsys.readouterr().err
    # a dry run counts the videos of the lists it is given
    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4 1\nc.mp4 2\n")
    (tmp_path / "val.csv").write_text("d.mp4 0\n")
    assert main(["reproduce", "--recipe", "ssv2", "--dry-run", "--data-root", str(tmp_path), "--mfu", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "50 epochs x 3 videos x 1 clip" in printed and "1 videos x 2x3 views" in printed and "0.5 MFU" in printed
