"""first-contact: the dry run of the whole plan through benchmarks/gpu_suite.sh, the watchdog, --only,
and the install step's wheel choice."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unet_fast.benchmark import first_contact
from unet_fast.benchmark.first_contact import Step, new_document, run_wave, summary_table
from unet_fast.benchmark.first_contact_checks import verdict
from unet_fast.benchmark.first_contact_install import matching_wheel, wheel_label

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("first-contact")
    env = dict(os.environ, PYTHON=sys.executable, FIRST_CONTACT_SITE=str(outdir / "site"))
    env.pop("TRITON_INTERPRET", None)
    started = time.monotonic()
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "first-contact", str(outdir), "--dry-run"],
                            capture_output=True, text=True, env=env, timeout=400)
    return result, outdir, time.monotonic() - started


def test_dry_run_runs_every_step_within_the_deadline(dry_run):
    result, outdir, seconds = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads((outdir / "first-contact.json").read_text())
    assert document["dry_run"] is True
    assert seconds < first_contact.RUN_DEADLINE_S + 30
    for step in first_contact.plan():
        record = document[step.section][step.name]
        assert record["status"] == "ok" or (record["status"].startswith("skipped: dry run: ") and len(record["status"]) > 30), \
            (step.name, record["status"])
        assert record["seconds"] <= step.deadline_s + 5
    assert document["environment"]["install"]["status"].startswith("skipped: dry run")
    # the commit this tree is at: git's, or the COMMIT file of a copy without .git (make's compat copy)
    if (ROOT / ".git").exists():
        expected = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
    else:
        expected = (ROOT / "COMMIT").read_text().split()[0].removesuffix("-dirty")
    assert document["environment"]["commit"].removesuffix("-dirty") == expected
    # the checks that the CPU can run did run, on every kernel family, with real comparisons
    families = document["numerics"]["kernels_fp32"]["families"]
    assert set(families) == {f"{kind}_{part}" for kind in ("conv3x3", "upconv2x2", "conv1x1")
                             for part in ("forward", "input_grad", "weight_grad")}
    assert all(entry["checked"] > 0 and 0 < entry["worst_error"] < 1e-5 for entry in families.values())
    assert document["numerics"]["kernels_fp16"]["status"] == "ok"
    assert document["model"]["model_fp32"]["families"]["parameter_grads"]["checked"] > 10
    for name in ("train_step_b1", "fused_conv", "elastic_warp_bandwidth", "tiled_inference"):
        assert document["bench"][name]["status"] == "ok", document["bench"][name]
    count = document["environment"]["triton_kernels"]
    assert count["gpu_compiles"] >= count["variants"] > 0


def test_dry_run_output_ends_with_the_summary_table(dry_run):
    result, outdir, _ = dry_run
    table = (outdir / "summary.txt").read_text().strip()
    assert result.stdout.strip().endswith(table)
    rows = table.splitlines()
    assert rows[-1].startswith("ok ") and "failed 0" in rows[-1]
    for step in first_contact.plan():
        assert any(row.startswith(f"{step.section}/{step.name} ") for row in rows), step.name


def _sleeper(pid_file: Path):
    def run(context):
        child = subprocess.Popen(["sleep", "60"])
        pid_file.write_text(str(child.pid))
        time.sleep(60)
        return {}

    return run


def test_watchdog_kills_a_step_and_its_subprocesses_at_the_deadline(tmp_path):
    pid_file = tmp_path / "pid"
    records = {}
    step = Step("bench", "sleeper", 1.5, 0, _sleeper(pid_file))
    started = time.monotonic()
    run_wave([step], {}, time.monotonic() + 60, lambda s, r: records.__setitem__(s.name, r))
    assert time.monotonic() - started < 10
    assert records["sleeper"]["status"] == "failed: deadline"
    grandchild = int(pid_file.read_text())
    time.sleep(0.2)
    state = Path(f"/proc/{grandchild}/stat")
    assert not state.exists() or state.read_text().split()[2] == "Z"


def test_failing_and_late_steps_are_recorded(tmp_path):
    def broken(context):
        raise ValueError("bad shape")

    records = {}
    run_wave([Step("numerics", "broken", 30, 0, broken)], {}, time.monotonic() + 60,
             lambda s, r: records.__setitem__(s.name, r))
    assert records["broken"]["status"] == "failed: ValueError: bad shape"
    assert "ValueError" in records["broken"]["traceback"]
    run_wave([Step("bench", "late", 30, 0, lambda c: {})], {}, time.monotonic() - 1,
             lambda s, r: records.__setitem__(s.name, r))
    assert records["late"]["status"].startswith("skipped: run deadline")


def test_only_reruns_the_named_steps_and_keeps_the_others(tmp_path):
    steps = [Step("numerics", "a", 1, 0, dict), Step("bench", "b", 1, 1, dict)]
    previous = {"dry_run": True, "environment": {"device_name": "x"}, "numerics": {"a": {"status": "failed: deadline", "seconds": 1.0}},
                "model": {}, "bench": {"b": {"status": "ok", "seconds": 2.0, "ms": 3.0}}}
    (tmp_path / first_contact.JSON_NAME).write_text(json.dumps(previous))
    document = new_document(tmp_path, steps, True, {"a"})
    assert document["numerics"]["a"]["status"] == "skipped: not started"
    assert document["bench"]["b"] == previous["bench"]["b"]
    fresh = new_document(tmp_path, steps, True, None)
    assert fresh["bench"]["b"]["status"] == "skipped: not started"
    assert "a" in summary_table(document) and "b" in summary_table(document)


def test_unknown_only_step_is_refused(tmp_path, capsys):
    assert first_contact.main([str(tmp_path), "--only", "kernels_fp32,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_wheel_choice_matches_python_and_torch(tmp_path):
    assert wheel_label("2.11.0+cu130", "13.0") == "cu130torch2.11"
    assert wheel_label("2.14.1", None) == "cputorch2.14"
    for name in ("unet_fast-0.1.0+cu130torch2.11-cp311-cp311-linux_x86_64.whl",
                 "unet_fast-0.1.0+cu130torch2.14-cp312-cp312-linux_x86_64.whl",
                 "unet_fast-0.1.0+cu130torch2.11-cp312-cp312-linux_x86_64.whl"):
        (tmp_path / name).write_text("")
    chosen = matching_wheel(tmp_path, "cp312", "cu130torch2.11")
    assert chosen.name == "unet_fast-0.1.0+cu130torch2.11-cp312-cp312-linux_x86_64.whl"
    assert matching_wheel(tmp_path, "cp313", "cu130torch2.11") is None


def test_numerics_rule_is_twice_pytorchs_error():
    assert verdict(1.9e-3, 1e-3)[0] and not verdict(2.1e-3, 1e-3)[0]
    assert not verdict(float("inf"), 1e-3)[0] and not verdict(float("nan"), 1e-3)[0]
    assert verdict(9e-7, 0.0)[0] and not verdict(1.1e-6, 0.0)[0]  # the fp32 floor: 2 x 8 x 2**-24
