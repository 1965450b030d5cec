import numpy as np
import torch

from motionmae.data.datasets import collate, dense_view_indices
from motionmae.data.transforms import eval_views
from motionmae.engine.evaluate import average_view_scores, predict_multiview


class _PoolLinear(torch.nn.Module):
    """A small real classifier: mean over time and space, then a linear layer."""

    def __init__(self, c=3, k=4):
        super().__init__()
        self.fc = torch.nn.Linear(c, k)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3, 4)))


def test_average_view_scores_is_mean_of_per_view_softmax():
    logits = torch.randn(2, 6, 5)
    avg = average_view_scores(logits)
    for b in range(2):
        per_view = [torch.softmax(logits[b, v], -1) for v in range(6)]
        assert torch.allclose(avg[b], torch.stack(per_view).mean(0), atol=1e-6)
    assert torch.allclose(avg.sum(-1), torch.ones(2))


def test_predict_multiview_equals_mean_of_per_view_scores():
    torch.manual_seed(0)
    model = _PoolLinear()
    g = torch.Generator().manual_seed(1)
    videos = torch.randint(0, 256, (5, 6, 3, 4, 8, 8), dtype=torch.uint8, generator=g)  # 5 videos x 6 views
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    # batches as the test loader gives them (views flattened by `collate`); video 4 is padded in twice
    order = [[3, 0], [1, 4], [2, 4]]
    loader = [collate([{"video": videos[i], "label": torch.tensor([i, 10 + i]), "index": i} for i in b]) for b in order]
    scores, labels, index = predict_multiview(model, loader, torch.device("cpu"), mean, std)
    assert index.tolist() == [0, 1, 2, 3, 4]
    assert labels.tolist() == [[i, 10 + i] for i in range(5)]
    m, s = torch.tensor(mean).view(3, 1, 1, 1), torch.tensor(std).view(3, 1, 1, 1)
    for i in range(5):
        logits = torch.stack([model(((videos[i, v].float() / 255 - m) / s)[None])[0] for v in range(6)])
        assert torch.allclose(scores[i], average_view_scores(logits[None])[0], atol=1e-5)


def test_k_temporal_views_span_the_clip():
    n, t, stride = 300, 16, 4
    for k in (2, 5, 10):
        views = dense_view_indices(n, t, stride, k)
        assert len(views) == k
        starts = [int(v[0]) for v in views]
        last = stride * ((n - 1) // stride)  # VideoMAE's views are cut from the frames 0, s, 2s, ...
        assert starts[0] == 0 and int(views[-1][-1]) == last  # first view starts at frame 0, last ends at the end
        assert all(np.all(np.diff(v) == stride) for v in views)
        gaps = np.diff(starts)
        assert (gaps % stride == 0).all() and gaps.min() >= 0 and gaps.max() - gaps.min() <= stride  # evenly spread
        covered = np.zeros(n, bool)
        for v in views:
            covered[v[0]:v[-1] + 1] = True
        if k * ((t - 1) * stride + 1) >= n:
            assert covered[: last + 1].all()


def test_three_spatial_crops_cover_the_frame():
    for h, w in ((32, 80), (80, 32)):  # landscape and portrait, short side already at the test size
        clip = torch.arange(h * w, dtype=torch.int32).view(1, 1, h, w).expand(3, 2, h, w).contiguous()
        crops = eval_views(clip, 32, 32, 3)  # no resize: every crop pixel still holds its source position
        assert len(crops) == 3 and all(c.shape[-2:] == (32, 32) for c in crops)
        seen = torch.zeros(h * w, dtype=torch.bool)
        for c in crops:
            seen[c[0, 0].flatten().long()] = True
        assert seen.all()  # start, centre and end crops together cover the whole frame
