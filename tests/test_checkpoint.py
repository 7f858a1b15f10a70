"""Checkpoint files: damaged, missing, refused (pickles) and other-model checkpoints give a
CheckpointError naming the file; the latest pointer and pruning survive leftovers of killed saves."""
import ast
import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

pytest.importorskip("safetensors")

from unet_fast import checkpoint as ckpt
from unet_fast.errors import CheckpointError, CheckpointNotFoundError, UserError
from unet_fast.reference import UNet

PACKAGE = Path(__file__).resolve().parents[1] / "unet_fast"
CONFIG = dict(in_channels=1, num_classes=2, base_channels=2, depth=3)


def _save(run_dir, step=1, model=None):
    """A checkpoint of a tiny reference U-Net with one AdamW step of optimizer state."""
    torch.manual_seed(step)
    model = model or UNet(**CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(1, 1, 44, 44)).sum().backward()
    optimizer.step()
    state = dict(config={"depth": model.depth}, model_config=model.config(), rng=[])
    directory = ckpt.save_checkpoint(run_dir, model_state=model.state_dict(), optimizer_state=optimizer.state_dict(),
                                     state=state, step=step)
    return directory, model, optimizer


def test_roundtrip_records_the_size_and_sha256_of_each_tensors_file(tmp_path):
    directory, model, optimizer = _save(tmp_path)
    model_state, optimizer_state, state = ckpt.load_checkpoint(tmp_path)
    for name in (ckpt.MODEL, ckpt.OPTIMIZER):
        data = (directory / name).read_bytes()
        assert state["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    for key, value in model.state_dict().items():
        assert torch.equal(model_state[key], value), key
    expected = optimizer.state_dict()
    for param_id, entries in expected["state"].items():
        for name, value in entries.items():
            assert torch.equal(torch.as_tensor(optimizer_state["state"][param_id][name]), torch.as_tensor(value))


def _truncate(file: Path, keep) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: keep(len(data))])


def _flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x40
    file.write_bytes(bytes(data))


def _edit_state(directory: Path, edit) -> None:
    state = json.loads((directory / ckpt.STATE).read_text())
    edit(state)
    (directory / ckpt.STATE).write_text(json.dumps(state))


DAMAGE = {
    "model truncated to half": (ckpt.MODEL, lambda d: _truncate(d / ckpt.MODEL, lambda n: n // 2), "truncated"),
    "model truncated in its header": (ckpt.MODEL, lambda d: _truncate(d / ckpt.MODEL, lambda n: 5), "truncated"),
    "model byte flipped": (ckpt.MODEL, lambda d: _flip_last_byte(d / ckpt.MODEL), "SHA-256"),
    "optimizer byte flipped": (ckpt.OPTIMIZER, lambda d: _flip_last_byte(d / ckpt.OPTIMIZER), "SHA-256"),
    "model missing": (ckpt.MODEL, lambda d: (d / ckpt.MODEL).unlink(), "missing"),
    "optimizer missing": (ckpt.OPTIMIZER, lambda d: (d / ckpt.OPTIMIZER).unlink(), "missing"),
    "state truncated": (ckpt.STATE, lambda d: _truncate(d / ckpt.STATE, lambda n: n // 2), "not valid JSON"),
    "state binary garbage": (ckpt.STATE, lambda d: (d / ckpt.STATE).write_bytes(b"\xff\xfe\x00"), "not valid JSON"),
    "state not an object": (ckpt.STATE, lambda d: (d / ckpt.STATE).write_text("[1, 2]"), "integer 'step'"),
    "state bad files entry": (ckpt.STATE, lambda d: _edit_state(d, lambda s: s.update(files={"x": 1})), "'files'"),
    # Without recorded checksums (older checkpoints) safetensors' own checks still catch a truncation.
    "truncated, no checksums": (ckpt.MODEL, lambda d: (_edit_state(d, lambda s: s.pop("files")),
                                                     _truncate(d / ckpt.MODEL, lambda n: n - 7)), "not a valid safetensors"),
    "optimizer entry damaged": (ckpt.OPTIMIZER, lambda d: _edit_state(d, lambda s: s["optimizer"].pop("scalars")),
                                "do not match the optimizer entry"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_checkpoint_names_the_file(tmp_path, case):
    name, damage, message = DAMAGE[case]
    _save(tmp_path, step=1)
    directory, _, _ = _save(tmp_path, step=2)
    damage(directory)
    with pytest.raises(CheckpointError, match=message) as error:
        ckpt.load_checkpoint(tmp_path)
    assert str(directory / name) in str(error.value)
    assert "step_00000001" in str(error.value)  # the earlier checkpoint that is still good
    assert isinstance(error.value, UserError)


def test_required_state_keys_are_named(tmp_path):
    directory, _, _ = _save(tmp_path)
    _edit_state(directory, lambda s: s.pop("model_config"))
    with pytest.raises(CheckpointError, match=r"\['model_config'\] are missing"):
        ckpt.load_checkpoint(tmp_path, required=("model_config",))


def test_missing_checkpoint_is_a_file_not_found_error_naming_the_path(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no such file") as error:
        ckpt.load_checkpoint(tmp_path / "nowhere")
    assert isinstance(error.value, FileNotFoundError) and str(tmp_path / "nowhere") in str(error.value)
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint found"):
        ckpt.load_checkpoint(tmp_path)


class _Payload:
    """Unpickling this creates a marker file: proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_bearing_files_are_refused_unread(tmp_path, writer):
    marker = tmp_path / "code-ran"
    directory, _, _ = _save(tmp_path / "run")
    payload = {"weight": _Payload(marker)}
    with open(directory / ckpt.MODEL, "wb") as f:
        pickle.dump(payload, f) if writer == "pickle" else torch.save(payload, f)
    with pytest.raises(CheckpointError, match="pickle") as error:
        ckpt.load_checkpoint(tmp_path / "run")
    assert str(directory / ckpt.MODEL) in str(error.value)
    # A foreign .pt checkpoint is named and refused, not opened.
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(CheckpointNotFoundError, match=r"model\.pt would have to be unpickled"):
        ckpt.load_checkpoint(tmp_path)
    assert not marker.exists()


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node, ast.unparse(node.func)


def test_the_package_never_unpickles():
    """No pickle imports; every torch.load passes weights_only=True (the source, parsed)."""
    offenders = []
    for source in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any((n or "").split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib") for n in names):
                    offenders.append(f"{source}:{node.lineno} imports a pickle module")
        for node, name in _calls(tree):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if name == "torch.load" and not safe:
                offenders.append(f"{source}:{node.lineno} torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and any(k.arg == "allow_pickle" for k in node.keywords):
                offenders.append(f"{source}:{node.lineno} numpy.load with allow_pickle")
    assert not offenders, offenders


@pytest.mark.parametrize("change", [dict(depth=4), dict(base_channels=4), dict(num_classes=3), dict(in_channels=3)])
def test_checkpoint_of_another_configuration_names_the_mismatch(tmp_path, change):
    directory, _, _ = _save(tmp_path)
    model_state, _, _ = ckpt.load_checkpoint(tmp_path)
    other = dict(CONFIG, **change)
    with pytest.raises(CheckpointError, match="another model configuration") as error:
        ckpt.load_model_state(UNet(**other), model_state, directory, other)
    message = str(error.value)
    assert str(directory) in message and "{}={}".format(*next(iter(change.items()))) in message
    expected = UNet(**other).state_dict()
    wrong = [k for k, v in expected.items() if k in model_state and model_state[k].shape != v.shape]
    assert ("missing" in message) == any(k not in model_state for k in expected)
    assert not wrong or f"{wrong[0]} is {tuple(model_state[wrong[0]].shape)} in the file" in message


def test_load_model_rejects_tensors_that_do_not_match_their_state(tmp_path):
    from unet_fast.train import load_model

    directory, model, _ = _save(tmp_path)
    assert load_model(tmp_path).config() == model.config()
    _edit_state(directory, lambda s: s["model_config"].update(depth=4))
    with pytest.raises(CheckpointError, match=r"another model configuration.*depth=4"):
        load_model(tmp_path)


def test_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    _save(tmp_path, step=1)
    _save(tmp_path, step=2)
    root = tmp_path / ckpt.CHECKPOINTS
    (root / ckpt.LATEST).write_text("step_00000009\n")  # dangling: a save killed mid-replace
    assert ckpt.find_checkpoint(tmp_path) == root / "step_00000002"
    (root / ckpt.LATEST).unlink()  # killed before the first pointer was written
    assert ckpt.find_checkpoint(tmp_path) == root / "step_00000002"
    assert ckpt.load_checkpoint(tmp_path)[2]["step"] == 2


def test_save_clears_leftovers_and_pruning_never_removes_the_new_latest(tmp_path):
    _save(tmp_path, step=3)
    root = tmp_path / ckpt.CHECKPOINTS
    (root / ".step_00000004.abc").mkdir()  # a temporary checkpoint of a killed save
    (root / ".trash.step_00000001.77").mkdir()  # a directory renamed aside, not yet deleted
    # A newer checkpoint a killed run renamed into place without updating latest; the resumed run
    # then writes step 2 with keep=1.
    torch.manual_seed(0)
    model = UNet(**CONFIG)
    ckpt.save_checkpoint(tmp_path, model_state=model.state_dict(), optimizer_state=None, state={}, step=2, keep=1)
    names = sorted(p.name for p in root.iterdir())
    assert names == [ckpt.LATEST, "step_00000002", "step_00000003"]
    assert ckpt.find_checkpoint(tmp_path) == root / "step_00000002"
    ckpt.save_checkpoint(tmp_path, model_state=model.state_dict(), optimizer_state=None, state={}, step=3, keep=1)
    assert sorted(p.name for p in root.iterdir()) == [ckpt.LATEST, "step_00000003"]
    model_state, optimizer_state, state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 3 and optimizer_state is None
    assert all(torch.equal(model_state[k], v) for k, v in model.state_dict().items())


def test_safetensors_files_are_never_mistaken_for_pickles(tmp_path):
    """A safetensors file starts with its header length: one that starts like a pickle (0x80 0x02,
    a 640-byte header) must still load."""
    seen = set()
    for length in range(520, 640):
        name = "x" * length
        ckpt.save_file({name: torch.full((2,), float(length))}, str(tmp_path / ckpt.MODEL))
        data = (tmp_path / ckpt.MODEL).read_bytes()
        seen.add(data[:2])
        (tmp_path / ckpt.STATE).write_text(json.dumps({"step": length}))
        model_state, _, _ = ckpt.load_checkpoint(tmp_path)
        assert torch.equal(model_state[name], torch.full((2,), float(length)))
    assert any(first[:1] == b"\x80" and first in ckpt.PICKLE_MAGIC for first in seen)
