"""Image-folder data sets: ``DIR/images/*`` and ``DIR/labels/*`` matched by file stem.

Formats: PNG (pillow) and TIFF (tifffile), 8- or 16-bit, grayscale or RGB (an alpha channel is
dropped); a multi-page TIFF is a stack whose every page is one sample (image and label stacks must
have the same number of pages).

Image normalisation to float32 in [0, 1] (``normalize``):
- ``"dtype"`` (default): divide by the largest value of the file's integer type (8-bit: 255,
  16-bit: 65535; 32-bit integer data whose values fit in 16 bits, as pillow reads some 16-bit
  PNGs, counts as 16-bit); bilevel images give 0/1; floating-point images must already lie in
  [0, 1].
- ``"minmax"``: rescale each image (page) by its own minimum and maximum (a constant image gives 0),
  for data that uses only part of its type's range, e.g. 12-bit data in 16-bit files.

Labels are class ids in [0, num_classes). A binary mask stored as 0/255 (its values a subset of
{0, 255} containing 255) maps 255 -> 1, so ISBI 2012 style labels (0 = membrane, 255 = cell) load as
0/1. Palette PNGs give their palette indices; an RGB label is accepted only when its channels are
equal. Every problem in the data (unreadable, truncated or empty file, unsupported type, unmatched
stems, size mismatch, label values outside the classes, an empty folder) raises
:class:`unet_fast.errors.DataError` (a ``ValueError``) naming the file; a bad argument raises
``ValueError``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unet_fast.errors import DataError

PNG_SUFFIXES = (".png",)
TIFF_SUFFIXES = (".tif", ".tiff")
SUPPORTED_SUFFIXES = PNG_SUFFIXES + TIFF_SUFFIXES
NORMALIZE_MODES = ("dtype", "minmax")


def _read_png(path: Path, palette_indices: bool) -> list[np.ndarray]:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("P", "PA") and not palette_indices:
            image = image.convert("RGB")
        elif image.mode == "PA":
            image = image.getchannel(0)  # the indices
        elif image.mode == "LA":
            image = image.convert("L")
        elif image.mode == "RGBA":
            image = image.convert("RGB")
        elif image.mode not in ("1", "L", "P", "RGB", "F") and not image.mode.startswith("I"):
            image = image.convert("RGB")  # CMYK, YCbCr, ...
        return [np.array(image)]


def _read_tiff(path: Path) -> list[np.ndarray]:
    import tifffile

    pages = []
    with tifffile.TiffFile(path) as tiff:
        for page in tiff.pages:
            array = page.asarray()
            if page.axes.startswith("S") and array.ndim == 3:  # planar (separate) samples first
                array = np.moveaxis(array, 0, -1)
            pages.append(array)
    return pages


def read_pages(path, *, palette_indices: bool = False) -> list[np.ndarray]:
    """The raw pages of a PNG or TIFF file: arrays (H, W) or (H, W, S); ValueError naming the file.

    A palette PNG gives its RGB colors, or with ``palette_indices`` its indices (for label maps).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (supported: {', '.join(SUPPORTED_SUFFIXES)})")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")
    try:
        pages = _read_png(path, palette_indices) if suffix in PNG_SUFFIXES else _read_tiff(path)
    except Exception as error:  # pillow and tifffile raise many types for damaged files
        raise DataError(f"{path}: cannot read the image ({type(error).__name__}: {error})") from error
    if not pages:
        raise DataError(f"{path}: the file holds no image")
    for index, page in enumerate(pages):
        if page.ndim not in (2, 3) or page.size == 0:
            raise DataError(f"{path}: page {index} has unsupported shape {page.shape} (expected (H, W) or (H, W, channels))")
    return pages


def _to_channels(page: np.ndarray, path: Path) -> np.ndarray:
    if page.ndim == 2:
        return page[None]
    if page.shape[-1] == 4:  # RGBA
        page = page[..., :3]
    if page.shape[-1] not in (1, 3):
        raise DataError(f"{path}: {page.shape[-1]} channels per pixel; expected grayscale, RGB or RGBA")
    return np.moveaxis(page, -1, 0)


def normalize_image(page: np.ndarray, path, normalize: str = "dtype") -> np.ndarray:
    """One page (H, W) or (H, W, S) as float32 (C, H, W) in [0, 1] (see the module docstring)."""
    path = Path(path)
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    array = _to_channels(page, path)
    if normalize == "minmax":
        array = array.astype(np.float64)
        low, high = array.min(), array.max()
        scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
        return scaled.astype(np.float32)
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype.itemsize == 1:
            full_scale = 255.0
        elif array.dtype.itemsize == 2 or (array.min() >= 0 and array.max() <= 65535):
            full_scale = 65535.0
        else:
            raise DataError(f"{path}: {array.dtype} values exceed 16 bits; use normalize='minmax'")
        if array.min() < 0:
            raise DataError(f"{path}: negative pixel values; use normalize='minmax'")
        return (array / full_scale).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DataError(f"{path}: floating-point values outside [0, 1] (or not finite); use normalize='minmax'")
        return array.astype(np.float32)
    raise DataError(f"{path}: unsupported pixel type {array.dtype}")


def read_image(path, normalize: str = "dtype") -> list[np.ndarray]:
    """Every page of an image file as float32 (C, H, W) in [0, 1]; C = 1 (grayscale) or 3 (RGB)."""
    return [normalize_image(page, path, normalize) for page in read_pages(path)]


def label_to_classes(page: np.ndarray, path, num_classes: int) -> np.ndarray:
    """One label page as int64 (H, W) class ids in [0, num_classes) (0/255 masks map to 0/1)."""
    path = Path(path)
    if page.ndim == 3:
        if not all(np.array_equal(page[..., 0], page[..., c]) for c in range(1, min(page.shape[-1], 3))):
            raise DataError(f"{path}: a label image must be single-channel (its color channels differ)")
        page = page[..., 0]
    if np.issubdtype(page.dtype, np.floating):
        if not np.isfinite(page).all() or not np.array_equal(page, np.round(page)):
            raise DataError(f"{path}: label values must be integers (class ids)")
    elif page.dtype != bool and not np.issubdtype(page.dtype, np.integer):
        raise DataError(f"{path}: unsupported label pixel type {page.dtype}")
    labels = page.astype(np.int64)
    values = np.unique(labels)
    if num_classes < 256 and values.max() == 255 and set(values.tolist()) <= {0, 255}:
        return (labels == 255).astype(np.int64)
    if values.min() < 0 or values.max() >= num_classes:
        bad = [int(v) for v in values if v < 0 or v >= num_classes]
        raise DataError(
            f"{path}: label values {bad[:10]} are outside the classes [0, {num_classes - 1}] "
            f"(num_classes={num_classes}); binary masks may use 0/255"
        )
    return labels


def read_label(path, num_classes: int = 2) -> list[np.ndarray]:
    """Every page of a label file as int64 (H, W) class ids."""
    return [label_to_classes(page, path, num_classes) for page in read_pages(path, palette_indices=True)]


def list_image_files(directory) -> dict[str, Path]:
    """Supported files in a directory by stem (hidden files ignored); ValueError on other files or duplicate stems."""
    directory = Path(directory)
    files: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataError(f"{path}: unsupported file type {path.suffix!r} (supported: {', '.join(SUPPORTED_SUFFIXES)})")
        if path.stem in files:
            raise DataError(f"{directory}: two files share the stem {path.stem!r}: {files[path.stem].name} and {path.name}")
        files[path.stem] = path
    return files


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/images/*`` with ``root/labels/*`` matched by stem, all read and checked at construction.

    Item ``i`` is ``(image (C, H, W) float32 in [0, 1], label (H, W) int64)``; one item per page of
    multi-page TIFF stacks. Images may differ in size; C must be the same for all. Attributes:
    ``images`` and ``labels`` (lists of those tensors), ``names`` (the stem, or ``stem[page]`` for a
    page of a stack), ``num_classes``, ``in_channels``, ``image_paths``, ``label_paths``.

    Args:
        root: the data directory.
        num_classes: the number of classes K; label values must lie in [0, K).
        normalize: "dtype" or "minmax", see the module docstring.
    Raises:
        ValueError naming the file or directory for every problem found.
    """

    def __init__(self, root, num_classes: int = 2, *, normalize: str = "dtype"):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        root = Path(root)
        image_dir, label_dir = root / "images", root / "labels"
        for directory in (image_dir, label_dir):
            if not directory.is_dir():
                raise DataError(f"{root}: expected the sub-directories images/ and labels/; {directory} is missing")
        image_files, label_files = list_image_files(image_dir), list_image_files(label_dir)
        if not image_files:
            raise DataError(f"{image_dir}: no images (supported: {', '.join(SUPPORTED_SUFFIXES)})")
        unlabelled = sorted(set(image_files) - set(label_files))
        orphans = sorted(set(label_files) - set(image_files))
        if unlabelled or orphans:
            parts = []
            if unlabelled:
                parts.append(f"images without a label: {[image_files[s].name for s in unlabelled][:10]}")
            if orphans:
                parts.append(f"labels without an image: {[label_files[s].name for s in orphans][:10]}")
            raise DataError(f"{root}: images and labels must match by file stem; " + "; ".join(parts))

        self.num_classes = num_classes
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.names: list[str] = []
        self.image_paths: list[Path] = []
        self.label_paths: list[Path] = []
        for stem in sorted(image_files):
            image_path, label_path = image_files[stem], label_files[stem]
            images = read_image(image_path, normalize)
            labels = read_label(label_path, num_classes)
            if len(images) != len(labels):
                raise DataError(f"{image_path} has {len(images)} pages but {label_path} has {len(labels)}")
            for page, (image, label) in enumerate(zip(images, labels)):
                if image.shape[1:] != label.shape:
                    where = f" (page {page})" if len(images) > 1 else ""
                    raise DataError(
                        f"{image_path}{where} is {image.shape[1]}x{image.shape[2]} (HxW) but its label "
                        f"{label_path} is {label.shape[0]}x{label.shape[1]}"
                    )
                if self.images and image.shape[0] != self.images[0].shape[0]:
                    raise DataError(
                        f"{image_path} has {image.shape[0]} channel(s) but {self.image_paths[0]} has "
                        f"{self.images[0].shape[0]}; all images must have the same channels"
                    )
                self.images.append(torch.from_numpy(image))
                self.labels.append(torch.from_numpy(label))
                self.names.append(stem if len(images) == 1 else f"{stem}[{page}]")
                self.image_paths.append(image_path)
                self.label_paths.append(label_path)
        self.in_channels = self.images[0].shape[0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]
