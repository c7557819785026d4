"""One LightningDataModule per dataset, each with a reward split held out from training."""
from .base import BaseDataModule, DataError
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .cluttered import ClutteredDigitsDataModule
from .digits import DigitsDataModule
from .imagenet import ImageNetDataModule
from .memory import InMemoryDataModule

__all__ = [
    "BaseDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ClutteredDigitsDataModule",
    "DataError",
    "DigitsDataModule",
    "ImageNetDataModule",
    "InMemoryDataModule",
]
