import math

import torch

from motionmae.eval.knn import knn_accuracy, knn_scores
from motionmae.eval.linear import linear_probe_accuracy


def _clusters(n_per_class, num_classes, dim, spread, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1) * 4.0
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(labels.shape[0], dim, generator=g)
    return feats, labels, centres


def test_knn_weighted_vote_by_hand():
    # query e0; one neighbour at cos 1 (class 0), two at cos 0.6 (class 1): DINO's exp(cos/0.07) lets the
    # single close neighbour outvote the two far ones, a plain majority vote would not.
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    scores = knn_scores(train, labels, torch.tensor([[2.0, 0.0]]), num_classes=3, k=3, temperature=0.07)
    expected = torch.tensor([[math.exp(1 / 0.07), 2 * math.exp(0.6 / 0.07), 0.0]])
    assert torch.allclose(scores, expected, rtol=1e-4)
    assert scores.argmax().item() == 0
    # with a high temperature the weights flatten and the majority wins
    assert knn_scores(train, labels, torch.tensor([[2.0, 0.0]]), 3, k=3, temperature=100.0).argmax().item() == 1


def test_knn_ignores_unlabelled_and_caps_k():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scores = knn_scores(train, torch.tensor([-1, 1]), torch.tensor([[1.0, 0.0]]), num_classes=2, k=50)
    assert scores[0, 0] == 0 and scores[0, 1] > 0


def test_knn_and_linear_recover_gaussian_clusters():
    tr_x, tr_y, _ = _clusters(30, 5, 16, 0.5, seed=0)
    te_x, te_y, _ = _clusters(20, 5, 16, 0.5, seed=0)  # same centres (same seed), fresh noise below
    te_x = te_x + 0.25 * torch.randn(te_x.shape, generator=torch.Generator().manual_seed(1))
    assert knn_accuracy(tr_x, tr_y, te_x, te_y, 5, k=10) > 0.95
    assert linear_probe_accuracy(tr_x, tr_y, te_x, te_y, 5, epochs=50, batch_size=32) > 0.95
    # the same features with shuffled labels carry no structure: both fall to about chance (0.2)
    perm = torch.randperm(tr_y.shape[0], generator=torch.Generator().manual_seed(2))
    assert knn_accuracy(tr_x, tr_y[perm], te_x, te_y, 5, k=10) < 0.5
    assert linear_probe_accuracy(tr_x, tr_y[perm], te_x, te_y, 5, epochs=50, batch_size=32) < 0.5


def test_linear_probe_finds_one_informative_direction_among_loud_ones():
    # label = sign of a small-scale coordinate; the other coordinates are 100x larger noise. The BatchNorm
    # standardises the scales, the linear layer finds the direction; k-NN on cosine cannot.
    g = torch.Generator().manual_seed(0)
    def make(n):
        x = torch.randn(n, 8, generator=g) * 100.0
        x[:, 3] = torch.randn(n, generator=g) * 0.01
        return x, (x[:, 3] > 0).long()
    tr_x, tr_y = make(400)
    te_x, te_y = make(200)
    assert linear_probe_accuracy(tr_x, tr_y, te_x, te_y, 2, epochs=30, batch_size=64) > 0.9
    assert knn_accuracy(tr_x, tr_y, te_x, te_y, 2, k=10) < 0.7
