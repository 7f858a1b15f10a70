"""The training data: the train/validation split of a data set and the batches of tiles drawn from it."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from unet_fast import shapes
from unet_fast.train.config import TrainConfig


def load_datasets(config: TrainConfig):
    """(train, validation) datasets with ``images`` (N, C, H, W) float, ``labels`` (N, H, W) int64,
    ``num_classes``, ``in_channels``, ``names``; the validation set may be empty (None)."""
    from unet_fast import data as data_module

    if config.data == "synthetic":
        val_count = 2 if config.val_images is None else config.val_images
        full = data_module.SyntheticEMDataset(config.synthetic_images + val_count, config.synthetic_size, config.seed)
        return _split(full, val_count)
    path = Path(config.data)
    if not path.is_dir():
        raise ValueError(f"--data {config.data!r} is neither 'synthetic' nor a directory with images/ and labels/")
    full = data_module.ImageFolderDataset(path, config.num_classes)
    count = len(full.labels)
    if config.val_images is None:
        val_count = min(3, max(1, round(0.1 * count)))
        if count - val_count < 1:
            val_count = 0  # a single image trains and is not validated on
    elif config.val_images >= count:
        raise ValueError(
            f"val_images={config.val_images} leaves no training image: {config.data} holds {count} image(s)"
        )
    else:
        val_count = config.val_images
    return _split(full, val_count)


class _Subset:
    def __init__(self, source, index: slice):
        self.images, self.labels = source.images[index], source.labels[index]
        instances = getattr(source, "instances", None)
        self.instances = instances[index] if instances is not None else None
        self.names = list(source.names)[index]
        self.num_classes, self.in_channels = source.num_classes, source.in_channels


def _split(full, val_count: int):
    count = len(full.labels)
    train = _Subset(full, slice(0, count - val_count))
    val = _Subset(full, slice(count - val_count, count)) if val_count else None
    return train, val


class TrainingTiles:
    """Draws training batches: image tiles (B, C, T, T) with their labels and loss weights (B, O, O)
    for the model's output window, from images mirror-padded by the network's context margin.

    Output windows come from ``unet_fast.data.TileSampler`` (uniform, or class-balanced with
    ``balanced_sampling``); its generator is seeded per DDP rank, so ranks draw different tiles.
    Weight maps are computed once per image (the paper's w(x), on the full label map, so cells cut
    by a tile edge keep their true distances). With augmentation, ``unet_fast.augment.ElasticAugment``
    warps image, labels and weights together on the device: it warps the tile's window out of a
    larger crop (``context`` px more each side: a rotated square's corners plus three standard
    deviations of the elastic displacement), so rotated tiles see real neighbouring pixels, not
    reflections of the tile. The coarse displacement lattice spans that crop.
    """

    def __init__(self, train, config: TrainConfig, device: torch.device, rank: int = 0):
        from unet_fast.data import TileSampler, fit_tile_size
        from unet_fast.inference import mirror_pad
        from unet_fast.weight_map import weight_map

        self.config, self.device = config, device
        self.tile, note = fit_tile_size(config.tile_size, [(n, tuple(l.shape)) for n, l in zip(train.names, train.labels)],
                                        config.depth, config.padding)
        if note and rank == 0:
            print(note, file=sys.stderr)
        self.out = shapes.output_size(self.tile, config.depth, config.padding)
        pad = (self.tile - self.out) // 2
        self.augment, self.context = None, 0
        if config.augment:
            from unet_fast.augment import ElasticAugment

            self.augment = ElasticAugment()
            self.context = math.ceil(self.tile * (math.sqrt(2) - 1) / 2 + 3 * self.augment.settings["sigma"])
        border = pad + self.context
        class_weights = config.class_weights if config.class_weights is not None else ("balanced" if config.class_balance else None)
        instances = train.instances if train.instances is not None else [None] * len(train.labels)
        self.images, self.labels, self.weights = [], [], []
        for name, image, label, cells in zip(train.names, train.images, train.labels, instances):
            weights = weight_map(label.long(), num_classes=train.num_classes, instances=cells,
                                 w0=config.w0, sigma=config.sigma, class_weights=class_weights)
            def padded(t):
                return mirror_pad(mirror_pad(t[None].float(), border, border, -2), border, border, -1)[0].to(device)

            # Labels and weights are mirrored like the image, so augmentation can warp the whole tile.
            self.images.append(padded(image))
            self.labels.append(padded(label).long())
            self.weights.append(padded(weights))
        self.pad = pad
        self.sampler = TileSampler(list(train.labels), self.out, num_classes=train.num_classes,
                                   class_balanced=config.balanced_sampling, seed=config.seed * 1000 + rank)

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tiles (B, C, T, T), labels (B, O, O) int64, weights (B, O, O) float32) on the device."""
        tiles, labels, weights = [], [], []
        for _ in range(self.config.batch_size):
            where = self.sampler.sample()
            crop = self.tile + 2 * self.context
            window = (slice(where.top, where.top + crop), slice(where.left, where.left + crop))
            tiles.append(self.images[where.index][(slice(None), *window)])
            labels.append(self.labels[where.index][window])
            weights.append(self.weights[where.index][window])
        tiles, labels, weights = torch.stack(tiles), torch.stack(labels), torch.stack(weights)
        if self.augment is not None:
            # The centred tile-sized window of the warped crop: rotation about the tile's centre.
            tiles, labels, weights = self.augment(tiles, labels, weights, out_size=(self.tile, self.tile),
                                                  generator=generator)
        inner = (slice(None), slice(self.pad, self.pad + self.out), slice(self.pad, self.pad + self.out))
        return tiles, labels[inner].contiguous(), weights[inner].contiguous()

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

