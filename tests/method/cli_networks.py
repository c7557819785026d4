"""Networks a user might get wrong, importable by the CLI subprocess of test_cli.py."""
import torch
import torch.nn as nn

from tiny import TinyCNN


class TupleCNN(TinyCNN):
    """Returns (logits, features), as many research codebases do."""

    def forward(self, x):
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.head(features), features


class DataDependentCNN(TinyCNN):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def forward(self, x):
        out = super().forward(x)
        if out.sum() > 0:
            out = out * 2
        return out
