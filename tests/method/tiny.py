"""A user-defined CNN (not registered anywhere) and helpers shared by the method tests."""
import torch
import torch.nn as nn


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 7, in_channels: int = 3, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class NaNCNN(TinyCNN):
    """Produces a NaN loss from the third step on (a diverging run)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__(num_classes, in_channels)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.steps += 1
            if self.steps > 2:
                return out * float("nan")
        return out
