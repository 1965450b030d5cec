"""Linear probe on frozen features, as in MAE's linear probing: BatchNorm1d(affine=False) then a Linear layer.

The BatchNorm without affine parameters only standardises the features (it is a linear map, so the probe
stays linear) which makes one learning rate fit encoders whose feature scales differ. MAE trains it with
LARS at batch 16384; with features cached in memory we use SGD with momentum and a cosine schedule over
`epochs` passes of mini-batches, which converges on the small feature sets this code is run on.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def linear_probe_model(dim: int, num_classes: int) -> nn.Sequential:
    head = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.01)  # MAE's head init for linear probing
    nn.init.zeros_(head.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), head)


def train_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = 100,
                       lr: float = 0.1, batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0) -> nn.Module:
    """Train on (N, D) features and (N,) labels (rows with label < 0 are ignored); returns the probe in eval mode."""
    keep = labels >= 0
    x, y = features[keep].float(), labels[keep].long()
    n = x.shape[0]
    if n < 2:
        raise ValueError("a linear probe needs at least two labelled training features")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = linear_probe_model(x.shape[1], num_classes).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size  # drop the ragged last batch: BatchNorm dislikes a batch of one
    total = epochs * steps_per_epoch
    model.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(x.device)
        for i in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return model.eval()


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                          **kwargs) -> float:
    """Train a probe on the training features; top-1 accuracy over the labelled test rows."""
    model = train_linear_probe(train_features, train_labels, num_classes, **kwargs)
    keep = test_labels >= 0
    with torch.no_grad():
        pred = model(test_features[keep].float()).argmax(1)
    return (pred == test_labels[keep]).float().mean().item()
