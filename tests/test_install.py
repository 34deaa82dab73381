"""The wheel, as a new user gets it: built from this checkout, installed into a fresh venv, used from a folder
that is not the checkout, with an empty target cache (the C target is built from the sources the wheel carries)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from remanence.layout import ROOT
from suite_run import require


# The wheel is built once, by the one worker (xdist --dist loadgroup) that runs both tests.
pytestmark = pytest.mark.xdist_group("install")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The venv's bin folder, with the wheel of this checkout installed."""
    base = tmp_path_factory.mktemp("install")
    # Built from a copy: setuptools writes build/ beside the sources, which must not land in the checkout.
    source = base / "checkout"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".tox", "build", "reports",
                                                                "node_modules", "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"), str(source)],
                   check=True, capture_output=True)
    wheel = next((base / "dist").glob("remanence-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    subprocess.run([str(base / "venv" / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True)
    return base / "venv" / "bin"


def remanence(bin_dir: Path, *args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run([str(bin_dir / "remanence"), *args], capture_output=True, text=True, cwd=cache.parent, env=env)


def test_the_wheel_carries_the_scenarios_the_target_sources_the_sdks_and_examples_under_the_import_name_remanence(installed):
    wheel = next(installed.parent.parent.joinpath("dist").glob("remanence-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "remanence/cli.py" in names and not any(n.startswith("harness/") for n in names)
    assert "remanence/bundled/scenarios/c/malloc.nowipe.toml" in names
    assert "remanence/bundled/targets/PROTOCOL.md" in names
    assert not any("/build/" in n or "node_modules" in n or n.endswith(".pyc") for n in names)
    for sdk in ("c", "go", "node"):
        assert any(n.startswith(f"remanence/bundled/targets/sdk/{sdk}/") for n in names), sdk
        assert any(n.startswith(f"remanence/bundled/targets/examples/{sdk}/") for n in names), sdk
    assert "remanence/sdk.py" in names and "remanence/bundled/targets/examples/python/wipe_demo.py" in names


def test_list_doctor_and_a_run_work_outside_the_checkout_with_an_empty_cache(installed, tmp_path):
    require("c", "procmem")
    cache = tmp_path / "cache"
    listed = remanence(installed, "list", cache=cache)
    assert listed.returncode == 0 and "malloc.nowipe" in listed.stdout, listed.stderr
    doctor = remanence(installed, "doctor", "--no-build", "--json", cache=cache)
    assert doctor.returncode in (0, 3) and json.loads(doctor.stdout), doctor.stderr
    ran = remanence(installed, "run", "malloc.nowipe", "--method", "procmem", "--out", str(tmp_path / "out"), cache=cache)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert ran.returncode == 0 and {v["outcome"] for v in doc["verdicts"]} == {"PASS"}, ran.stderr
    assert any(p.name.startswith("c-") for p in (cache / "remanence" / "targets").iterdir())
    assert str(ROOT) not in json.dumps(doc)    # nothing of the checkout was used
    for language in ("c", "go", "node", "python"):
        sdk = remanence(installed, "sdk", language, cache=cache)
        assert sdk.returncode == 0 and Path(sdk.stdout.strip()).is_dir() and "site-packages" in sdk.stdout, sdk.stderr
