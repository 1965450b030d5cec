"""Multi-label fine-tuning: average precision worked out by hand, the two list formats giving the same multi-hot
targets, and a tiny run end to end (BCE, sigmoid multi-view scores, mAP in eval_metrics.json)."""

import json

import pytest
import torch

from engine_helpers import TINY, tiny_videos
from motionmae import config as C
from motionmae.data.datasets import build_dataset
from motionmae.engine.evaluate import average_precision, multilabel_metrics
from motionmae.engine.finetune import finetune
from motionmae.engine.mixup import Mixup
from motionmae.errors import UserError


def test_average_precision_by_hand():
    # ranked 1 0 1 0: precision at the two positives 1/1 and 2/3, each a recall step of 1/2 -> (1 + 2/3) / 2
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # ties are one threshold: {0.9: negative}, then {0.5, 0.5: one positive, one negative} -> recall 1 at precision 1/3
    assert average_precision(torch.tensor([0.9, 0.5, 0.5]), torch.tensor([0, 1, 0])) == pytest.approx(1 / 3)
    assert average_precision(torch.tensor([0.2, 0.1]), torch.tensor([1, 1])) == pytest.approx(1.0)
    assert average_precision(torch.tensor([0.2, 0.1]), torch.tensor([0, 0])) is None
    # mAP: the mean over classes with a positive (class 2 has none): (5/6 + 1/2) / 2
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.2, 0.2], [0.7, 0.9, 0.1], [0.6, 0.3, 0.0]])
    targets = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    m = multilabel_metrics(scores, targets)
    # class 1 ranks 0.9(neg) 0.3(pos) 0.2 0.1: precision 1/2 at its only positive
    assert m["per_class_ap"] == [pytest.approx(5 / 6), pytest.approx(1 / 2), None]
    assert m["mAP"] == pytest.approx((5 / 6 + 1 / 2) / 2) and m["num_samples"] == 4


def test_mixup_mixes_multi_hot_targets_without_smoothing():
    mix = Mixup(3, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)
    y = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    x = torch.zeros(2, 3, 2, 4, 4)
    g = torch.Generator().manual_seed(0)
    lam, _ = mix.draw(torch.Generator().manual_seed(0))
    _, soft = mix(x, y, g)
    assert torch.allclose(soft, y * lam + y.flip(0) * (1 - lam))


def _lists(folder, videos):
    names = sorted(p.name for p in videos.iterdir())
    hot = [(1, 0, 1), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 0), (0, 1, 1)]
    (folder / "cols.csv").write_text("# path run jump wave\n" + "".join(
        f"{videos / n} {' '.join(map(str, h))}\n" for n, h in zip(names, hot)))
    (folder / "classes.csv").write_text("".join(
        f"{videos / n} {' '.join(str(c) for c in range(3) if h[c])}\n" for n, h in zip(names, hot)))
    return hot


def test_both_multilabel_list_formats_give_the_same_targets(tmp_path):
    videos = tiny_videos(tmp_path / "v", n=6)
    hot = _lists(tmp_path, videos)
    a = build_dataset(C.DataConfig(train=str(tmp_path / "cols.csv")), "train", "finetune")
    b = build_dataset(C.DataConfig(train=str(tmp_path / "classes.csv"), list_format="multilabel"), "train", "finetune")
    assert a.labels.tolist() == b.labels.tolist() == [list(h) for h in hot]
    (tmp_path / "bad.csv").write_text(f"{videos / 'v00.mp4'} 0 2\n{videos / 'v01.mp4'} 1 1\n")
    cfg = C.load_config("", [*TINY, f"data.train={tmp_path / 'bad.csv'}", "finetune.task=multilabel",
                             f"train.output_dir={tmp_path / 'r'}"], C.FinetuneConfig)
    with pytest.raises(UserError, match="column 'label1' holds 2: .*data.list_format=multilabel"):
        finetune(cfg)
    with pytest.raises(UserError, match="finetune.label_columns=\\[...\\]"):
        C.load_config("", ["finetune.task=multilabel", "finetune.label_column=run"], C.FinetuneConfig)


def test_tiny_multilabel_finetune_reports_map(tmp_path, capsys):
    from motionmae.data.loader import make_loader
    from motionmae.data.datasets import collate
    from motionmae.engine.evaluate import predict_multiview
    from motionmae.models.classifier import build_classifier
    from motionmae.runtime.checkpoint import load_checkpoint

    videos = tiny_videos(tmp_path / "v", n=6)
    hot = _lists(tmp_path, videos)
    over = [*TINY, f"data.train={tmp_path / 'classes.csv'}", f"data.val={tmp_path / 'classes.csv'}", "data.list_format=multilabel",
            "finetune.task=multilabel", "train.max_steps=3", "train.batch_size=2", f"train.output_dir={tmp_path / 'run'}",
            "finetune.aa=none", "data.test_clips=1", "data.test_crops=1", "train.loggers=[jsonl]"]
    cfg = C.load_config("", over, C.FinetuneConfig)
    summary = finetune(cfg)
    out = capsys.readouterr().out
    assert "multi-label over 3 classes" in out and "val mAP" in out
    metrics = json.loads((tmp_path / "run" / "eval_metrics.json").read_text())
    assert metrics["task"] == "multilabel" and set(metrics["per_class_ap"]) == {"label0", "label1", "label2"}
    # the same numbers by the other path: the checkpoint's sigmoid scores, AP per class
    model = build_classifier(cfg.model, 3)
    load_checkpoint(summary["checkpoint"], model)
    ds = build_dataset(cfg.data, "val", "test")
    scores, labels, _ = predict_multiview(model, make_loader(ds, 2, 0, collate_fn=collate), torch.device("cpu"),
                                          cfg.data.mean, cfg.data.std, activation="sigmoid")
    assert labels.tolist() == [list(h) for h in hot]
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(3)]
    assert list(metrics["per_class_ap"].values()) == pytest.approx(aps, abs=1e-6)
    assert metrics["mAP"] == pytest.approx(sum(aps) / 3, abs=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val/mAP"] == pytest.approx(metrics["mAP"]) and "train_acc" not in rows[0]
