"""``unet-fast demo`` end to end on a tiny configuration (the real one takes minutes on a CPU)."""
import pytest

for _package in ("scipy", "safetensors", "PIL"):  # the train extra
    pytest.importorskip(_package)

from unet_fast import demo


def test_run_demo_smoke(tmp_path, monkeypatch, capsys):
    tiny = dict(base_channels=2, depth=3, tile_size=60, optimizer="adamw", steps=2, synthetic_images=2,
                synthetic_size=64, val_interval=2)
    monkeypatch.setattr(demo, "CPU_DEMO", tiny)
    run_dir = demo.run_demo(out=tmp_path / "demo", device="cpu", progress=False)
    assert (run_dir / "overlays.png").is_file()
    from PIL import Image

    # Three held-out images stacked, each three 64 px panels wide.
    assert Image.open(run_dir / "overlays.png").size == (3 * 64, demo.HELD_OUT * 64)
    out = capsys.readouterr().out
    assert "held-out" in out and "tiles/s" in out
