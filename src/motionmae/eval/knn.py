"""k-nearest-neighbour classification on frozen features, as in DINO's `eval_knn.py`.

Features are L2-normalised, similarity is the cosine, the k nearest training samples vote for their class
with weight exp(cos / temperature) (temperature 0.07), and the class with the largest summed weight wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
               num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted votes (N_test, num_classes). Training rows with label < 0 (unlabelled) are ignored."""
    keep = train_labels >= 0
    train = F.normalize(train_features[keep].float(), dim=1)
    labels = train_labels[keep].long()
    if train.shape[0] == 0:
        raise ValueError("k-NN needs at least one labelled training feature")
    k = min(k, train.shape[0])
    test = F.normalize(test_features.float(), dim=1)
    out = []
    for start in range(0, test.shape[0], chunk):  # chunks bound the (chunk, N_train) similarity matrix
        sim, idx = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        out.append(votes.scatter_add_(1, labels[idx], (sim / temperature).exp()))
    return torch.cat(out)


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> float:
    """Top-1 accuracy over the labelled test rows."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature)
    keep = test_labels >= 0
    return (scores.argmax(1)[keep] == test_labels[keep]).float().mean().item()
