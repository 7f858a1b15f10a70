"""The wheel: built from the source distribution, installed with --no-deps into a fresh virtual
environment next to the installed torch, imported and run from outside the source tree.

CPU-only (UNET_FAST_NO_CUDA=1) to keep `make test` short; `make wheel` is the CUDA build. Marked
`wheel`: `make compat-check` deselects it, so `make test` builds it once.
"""
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import torch

from unet_fast._ext import torch_minor

pytestmark = [pytest.mark.wheel, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 1800


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel's path, the fresh venv's python, a working directory outside the source tree)."""
    work = tmp_path_factory.mktemp("wheel")
    sdist = work / _run(
        [sys.executable, "-c", f"import setuptools.build_meta as b; print(b.build_sdist({str(work)!r}))"],
        cwd=ROOT, timeout=300,
    ).strip().splitlines()[-1]
    env = {k: v for k, v in os.environ.items() if k not in ("UNET_FAST_FORCE_CUDA", "TORCH_CUDA_ARCH_LIST")}
    env.update(UNET_FAST_NO_CUDA="1", MAX_JOBS=env.get("MAX_JOBS", "2"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
          "-w", str(work / "dist"), str(sdist)], env=env, cwd=work, timeout=BUILD_TIMEOUT_S)
    (wheel,) = (work / "dist").glob("*.whl")

    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=300)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         timeout=600)
    # Only now the venv sees this interpreter's torch (a plain path entry: the site-packages' .pth
    # files, the editable unet-fast's among them, are not processed), so pip never met unet-fast there.
    site_packages = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    torch_site = pathlib.Path(torch.__file__).parents[1]
    pathlib.Path(site_packages, "torch-of-the-test.pth").write_text(f"{torch_site}\n")
    outside = work / "elsewhere"
    outside.mkdir()
    return wheel, python, outside


def _run_in_venv(installed, code: str) -> dict:
    _, python, outside = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # No compiler reachable: the wheel must need none.
    env.update(CC="/bin/false", CXX="/bin/false", PYTHONNOUSERSITE="1")
    return json.loads(_run([str(python), "-c", code], cwd=outside, env=env, timeout=300).strip().splitlines()[-1])


def test_wheel_is_named_for_its_torch_and_carries_the_built_extension(installed):
    wheel, _, _ = installed
    tag = sysconfig.get_config_var("SOABI").split("-")[1]  # e.g. 311 in cpython-311-x86_64-linux-gnu
    assert wheel.name.startswith(f"unet_fast-0.1.0+cputorch{torch_minor(torch.__version__)}-cp{tag}-"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.startswith("unet_fast/_C.") and name.endswith(".so") for name in names), names
    assert "unet_fast/_build_info.py" in names
    assert not any(name.startswith(("csrc/", "tests/")) for name in names)


def test_installed_wheel_imports_outside_the_source_tree_and_runs_an_op(installed):
    code = """
import json, torch, unet_fast
from unet_fast import _C
skip, x = torch.randn(2, 3, 9, 10), torch.randn(2, 4, 5, 6)
out = unet_fast.ops.center_crop_concat(skip, x)
print(json.dumps({"file": unet_fast.__file__, "C": _C.__file__, "info": unet_fast.build_info(),
                  "torch": torch.__version__, "matches_cat": torch.equal(out, torch.cat([skip[..., 2:7, 2:8], x], 1))}))
"""
    result = _run_in_venv(installed, code)
    venv = installed[1].parents[1]
    assert pathlib.Path(result["file"]).is_relative_to(venv) and pathlib.Path(result["C"]).is_relative_to(venv)
    assert not pathlib.Path(result["file"]).is_relative_to(ROOT)
    info = result["info"]
    assert info["extension"] is True, info["extension_error"]
    assert info["torch_version"] == result["torch"] == torch.__version__
    assert info["cuda_kernels"] is False and info["cuda_archs"] == []
    assert result["matches_cat"] is True


def test_installed_wheel_under_another_torch_minor_refuses_the_extension_before_loading_it(installed):
    # torch's version is what the check reads: here it says the next minor release is running.
    major, minor = torch_minor(torch.__version__).split(".")
    other = f"{major}.{int(minor) + 1}.0"
    code = f"""
import json, sys, torch
torch.__version__ = {other!r}
import unet_fast
info = unet_fast.build_info()
try:
    unet_fast.ops.center_crop_concat(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2))
    error = None
except ImportError as exc:
    error = str(exc)
print(json.dumps({{"info": info, "error": error, "loaded": "unet_fast._C" in sys.modules}}))
"""
    result = _run_in_venv(installed, code)
    assert result["loaded"] is False
    assert result["info"]["extension"] is False and result["info"]["torch_version"] == torch.__version__
    assert result["error"] is not None
    assert f"built against torch {torch.__version__}" in result["error"] and f"torch {other} is running" in result["error"]
