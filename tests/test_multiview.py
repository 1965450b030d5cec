import torch

from motionmae.eval.multiview import average_view_scores, predict_multiview


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


def test_predict_multiview_equals_per_view_loop_and_dedupes_indices():
    torch.manual_seed(0)
    model = _PoolLinear()
    g = torch.Generator().manual_seed(1)
    videos = torch.randint(0, 256, (5, 6, 3, 4, 8, 8), dtype=torch.uint8, generator=g)  # 5 videos x 6 views
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    # batches as a loader gives them; video 4 comes twice (sampler padding) and must be counted once
    order = [[3, 0], [1, 4], [2, 4]]
    loader = [{"video": videos[i], "label": torch.tensor([[j] for j in i]),
               "index": torch.tensor(i)} for i in order]
    scores, labels, index = predict_multiview(model, loader, torch.device("cpu"), mean, std)
    assert index.tolist() == [0, 1, 2, 3, 4]
    assert labels[:, 0].tolist() == [0, 1, 2, 3, 4]
    m = torch.tensor(mean).view(3, 1, 1, 1)
    s = torch.tensor(std).view(3, 1, 1, 1)
    for i in range(5):
        per_view = [torch.softmax(model(((videos[i, v].float() / 255 - m) / s)[None])[0], -1) for v in range(6)]
        assert torch.allclose(scores[i], torch.stack(per_view).mean(0), atol=1e-5)
