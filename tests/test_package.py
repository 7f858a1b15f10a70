"""The package's public names: eager core, lazily imported workflow entry points."""
import subprocess
import sys

import pytest

import unet_fast


def test_import_does_not_load_the_workflow_dependencies():
    # A fresh interpreter: this test process may already have imported scipy elsewhere.
    code = "import sys, unet_fast; print(sorted(m for m in ('scipy', 'matplotlib', 'unet_fast.train') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_every_exported_name_resolves_to_its_module_attribute():
    import importlib
    import types

    from unet_fast import inference, train

    home = {"__version__": "unet_fast._version", "build_info": "unet_fast._ext", "UNet": "unet_fast.model",
            "predict_tiled": "unet_fast.inference", "predict_large": "unet_fast.inference", "TrainConfig": "unet_fast.train", "load_model": "unet_fast.train",
            "weighted_cross_entropy": "unet_fast.losses", "dice_loss": "unet_fast.losses",
            "segmentation_metrics": "unet_fast.metrics", "ElasticAugment": "unet_fast.augment",
            "SyntheticEMDataset": "unet_fast.data", "ImageFolderDataset": "unet_fast.data"}
    submodules = {"ops", "reference", "shapes"}
    assert set(unet_fast.__all__) == set(home) | submodules
    for name in unet_fast.__all__:
        value = getattr(unet_fast, name)
        if name in submodules:
            assert isinstance(value, types.ModuleType) and value.__name__ == f"unet_fast.{name}"
        else:
            assert value is getattr(importlib.import_module(home[name]), name), name
    assert unet_fast.predict_tiled is inference.predict_tiled
    assert unet_fast.load_model is train.load_model
    assert unet_fast.train is train  # the submodule, not shadowed by the train() function
    assert "predict_tiled" in dir(unet_fast)


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        unet_fast.no_such_name
