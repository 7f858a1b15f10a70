"""Lazy image sources for streamed prediction: TIFF/BigTIFF, Zarr, OME-Zarr, NumPy memmaps, array-likes.

Every source is seen as (Z, C, H, W): ``read(z, rows, cols)`` returns the raw pixels of one window of
slice ``z`` as a (C, h, w) NumPy array, read from the file without loading the rest. Layouts are
letters over the array's axes: ``Y``, ``X`` (required), ``C`` (channels), ``Z`` (a stack of 2-D
slices, each segmented on its own) and ``T`` (a time axis of size 1, as OME-Zarr has).

Normalisation follows the training data loader (:mod:`unet_fast.data.folder`): ``normalize="dtype"``
(default) divides 8-bit by 255 and 16-bit by 65535, takes bool as 0/1 and floats as they are (they
must lie in [0, 1]); ``"minmax"`` rescales each slice by its own minimum and maximum, found by one
extra pass over the slice, band by band.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from unet_fast.errors import PathNotFoundError
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
ZARR_SUFFIXES = (".zarr",)
IO_EXTRA_HINT = "pip install 'unet-fast[io]'"
# TIFF series axes -> layout letters: samples per pixel are channels; depth and time stack. tifffile's
# "C", "Q" and "I" for the pages of a plain multi-page file are guesses, so there the shape decides.
TIFF_AXES = {"Y": "Y", "X": "X", "S": "C", "Z": "Z", "T": "Z"}
AMBIGUOUS_HINT = ("pass channel_axis=0 for (C, H, W), channel_axis=-1 for (H, W, C), or layout='ZYX' "
                  "for a stack of 2-D slices (CLI: --channel-axis / --layout)")


def import_zarr():
    """The zarr module, or an ImportError naming the extra that provides it."""
    try:
        import zarr
    except ImportError as error:
        raise ImportError(f"large-image I/O needs zarr 3: {IO_EXTRA_HINT}") from error
    return zarr


def import_tifffile():
    try:
        import tifffile
    except ImportError as error:
        raise ImportError(f"TIFF input and output need tifffile: {IO_EXTRA_HINT}") from error
    return tifffile


def guess_layout(shape: tuple[int, ...], in_channels: int, name: str) -> str:
    """The layout of an array without axis metadata; ValueError when its shape allows several."""
    small = 4  # at most this many channels: RGB(A) or a few stacked modalities
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        first, last = shape[0], shape[-1]
        if last <= small < min(shape[0], shape[1]):
            return "YXC"
        if first <= small < min(shape[1], shape[2]):
            if first == in_channels:
                return "CYX"
            raise ValueError(f"{name}: shape {shape} may be {first} channels or a stack of {first} slices "
                             f"(the model takes {in_channels} channel(s)): {AMBIGUOUS_HINT}")
        if min(shape) > small:
            return "ZYX"
    if len(shape) == 4:
        if shape[-1] <= small < min(shape[1], shape[2]):
            return "ZYXC"
        if shape[1] <= small < min(shape[2], shape[3]):
            return "ZCYX"
    raise ValueError(f"{name}: cannot tell the layout of shape {shape}: {AMBIGUOUS_HINT}")


def layout_from_channel_axis(ndim: int, channel_axis: int, name: str) -> str:
    base = "ZYX"[3 - (ndim - 1):] if ndim <= 4 else None
    if base is None or not -ndim <= channel_axis < ndim:
        raise ValueError(f"{name}: channel_axis={channel_axis} is not an axis of a {ndim}-D array")
    axis = channel_axis % ndim
    return base[:axis] + "C" + base[axis:]


class ArraySource:
    """An array-like (``shape``, ``dtype``, NumPy slicing) with a layout, read lazily as (Z, C, H, W)."""

    MINMAX_BAND_ROWS = 256  # rows read at a time by the min/max pass

    def __init__(self, array, layout: str, name: str, normalize: str = "dtype"):
        shape = tuple(int(s) for s in array.shape)
        layout = layout.upper()
        if len(layout) != len(shape) or sorted(layout) != sorted(set(layout)) or not set(layout) <= set("TZCYX") \
                or "Y" not in layout or "X" not in layout:
            raise ValueError(f"{name}: layout {layout!r} does not describe shape {shape} (one letter per axis "
                             "from T, Z, C, Y, X; Y and X required)")
        if "T" in layout and shape[layout.index("T")] != 1:
            raise ValueError(f"{name}: a time axis of {shape[layout.index('T')]} points; segment one time point")
        self.array, self.layout, self.name, self.normalize_mode = array, layout, name, normalize
        self._ranges: dict[int, tuple[np.float64, np.float64]] = {}
        self.dtype = np.dtype(array.dtype)
        size = dict(zip(layout, shape))
        self.shape = (size.get("Z", 1), size.get("C", 1), size["Y"], size["X"])
        if min(self.shape) < 1:
            raise ValueError(f"{name}: empty image of shape {shape}")
        if not (self.dtype == bool or np.issubdtype(self.dtype, np.integer) or np.issubdtype(self.dtype, np.floating)):
            raise ValueError(f"{name}: unsupported pixel type {self.dtype}")

    @property
    def stacked(self) -> bool:
        return "Z" in self.layout

    def read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        """Raw pixels (C, h, w) of slice ``z``, rows and columns as given."""
        index = {"T": 0, "Z": z, "C": slice(None), "Y": rows, "X": cols}
        try:
            window = np.asarray(self.array[tuple(index[axis] for axis in self.layout)])
        except Exception as error:  # tifffile, zarr and codecs raise many types for damaged data
            raise ValueError(f"{self.name}: cannot read rows {rows.start}:{rows.stop} of slice {z} "
                             f"({type(error).__name__}: {error}); the file may be truncated or damaged") from error
        kept = [axis for axis in self.layout if axis in "CYX"]
        if "C" not in kept:
            return window[None]
        return np.moveaxis(window, kept.index("C"), 0)

    def value_range(self, z: int) -> tuple[np.float64, np.float64]:
        """The minimum and maximum of slice ``z`` (all channels), read band by band once."""
        if z not in self._ranges:
            height, width = self.shape[2:]
            low, high = np.inf, -np.inf
            for top in range(0, height, self.MINMAX_BAND_ROWS):
                band = self.read(z, slice(top, min(top + self.MINMAX_BAND_ROWS, height)), slice(0, width))
                low, high = min(low, band.min()), max(high, band.max())
            self._ranges[z] = (np.float64(low), np.float64(high))
        return self._ranges[z]

    def normalize(self, window: np.ndarray, z: int) -> np.ndarray:
        """float32 in [0, 1] as the training loader normalises (module docstring); ``z``: its slice."""
        if self.normalize_mode == "minmax":  # the loader's arithmetic, in float64, so the values agree
            low, high = self.value_range(z)
            scaled = (window.astype(np.float64) - low) / (high - low) if high > low else np.zeros(window.shape)
            return scaled.astype(np.float32)
        if self.dtype == bool:
            return window.astype(np.float32)
        if np.issubdtype(self.dtype, np.integer):
            if self.dtype.itemsize > 2 and window.size and (window.min() < 0 or window.max() > 65535):
                raise ValueError(f"{self.name}: {self.dtype} values outside 16 bits; rescale to uint8/uint16 "
                                 "or [0, 1] floats")
            if np.issubdtype(self.dtype, np.signedinteger) and window.size and window.min() < 0:
                raise ValueError(f"{self.name}: negative pixel values; rescale to [0, 1] floats")
            scale = 255.0 if self.dtype.itemsize == 1 else 65535.0
            return (window / scale).astype(np.float32)
        window = window.astype(np.float32)
        if window.size and not (np.isfinite(window).all() and window.min() >= 0 and window.max() <= 1):
            raise ValueError(f"{self.name}: floating-point values outside [0, 1] (or not finite), unlike the "
                             "training data; rescale them to [0, 1]")
        return window


def _ome_level(group, name: str):
    """The full-resolution array of an OME-Zarr image (v0.4 or v0.5) and its layout."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        arrays = sorted(key for key, _ in group.arrays())
        raise ValueError(f"{name}: a Zarr group that is not an OME-Zarr image (no 'multiscales'); "
                         f"open one of its arrays {arrays} instead")
    scale = multiscales[0]
    array = group[scale["datasets"][0]["path"]]
    axes = scale.get("axes")
    layout = "".join(str(a["name"] if isinstance(a, dict) else a).upper() for a in axes) if axes else None
    return array, layout


def open_source(source, *, in_channels: int, layout: str | None = None, channel_axis: int | None = None,
                normalize: str = "dtype"):
    """An :class:`ArraySource` for a path (TIFF, Zarr, OME-Zarr), a zarr array or any array-like.

    ``layout`` (letters, see the module docstring) or ``channel_axis`` override what the file says
    or the shape suggests; ``normalize``: "dtype" or "minmax" (module docstring). ValueError naming
    the source for anything unreadable or ambiguous.
    """
    from unet_fast.data.folder import NORMALIZE_MODES

    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if layout is not None and channel_axis is not None:
        raise ValueError("give layout or channel_axis, not both")
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise PathNotFoundError(f"{name}: no such file or directory")
        if path.suffix.lower() in TIFF_SUFFIXES:
            array, known = _open_tiff(path)
        elif path.suffix.lower() == ".png":  # small by nature: read whole, as the training loader does
            from unet_fast.data.folder import read_pages

            array, known = read_pages(path)[0], None
        elif path.is_dir() or path.suffix.lower() in ZARR_SUFFIXES:
            array, known = _open_zarr(path)
        else:
            raise ValueError(f"{name}: unsupported input {path.suffix!r} (TIFF, Zarr or PNG)")
    elif type(source).__module__.startswith("zarr") and hasattr(source, "arrays"):  # a zarr Group
        name = f"zarr group {source.path or '/'}"
        array, known = _ome_level(source, name)
    else:
        if not all(hasattr(source, attribute) for attribute in ("shape", "dtype", "__getitem__")):
            raise TypeError(f"source must be a path or an array-like with shape, dtype and slicing, "
                            f"got {type(source).__name__}")
        array, known, name = source, None, f"{type(source).__name__} of shape {tuple(source.shape)}"
    if channel_axis is not None:
        layout = layout_from_channel_axis(len(array.shape), channel_axis, name)
    if layout is None:
        layout = known or guess_layout(tuple(array.shape), in_channels, name)
    return ArraySource(array, layout, name, normalize)


def _open_tiff(path: Path):
    tifffile = import_tifffile()
    zarr = import_zarr()
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes = series.axes
        array = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
    except Exception as error:  # damaged or truncated headers
        raise ValueError(f"{path}: cannot read the TIFF ({type(error).__name__}: {error}); "
                         "the file may be truncated or damaged") from error
    if any(axis not in TIFF_AXES for axis in axes) or sum(TIFF_AXES[a] == "Z" for a in axes) > 1:
        return array, None  # unusual axes: the shape decides
    return array, "".join(TIFF_AXES[axis] for axis in axes)


def _open_zarr(path: Path):
    zarr = import_zarr()
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise ValueError(f"{path}: cannot open as Zarr ({type(error).__name__}: {error})") from error
    if isinstance(node, zarr.Group):
        return _ome_level(node, str(path))
    return node, None
