"""The target build cache under concurrency and damage: harnesses started together on an empty cache build
each target once and all run; a damaged cache entry is rebuilt, never used and never turned into a SKIP.

Run as a script to measure the concurrent cold-cache case over many trials:
    .venv/bin/python tests/test_build_cache.py --trials 10
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from remanence.targets import PROJECT_ROOT, TargetUnavailable, build_target, cache_dir
from suite_run import require

CONCURRENT_RUNS = 4


def start_run(cache: Path, out: Path) -> subprocess.Popen:
    """`remanence run malloc.nowipe` with procmem, in a process of its own, on the cache folder `cache`."""
    return subprocess.Popen(
        [sys.executable, "-m", "remanence", "run", "malloc.nowipe", "--method", "procmem",
         "--out", str(out), "-q", "--format", "json"],
        cwd=PROJECT_ROOT, env=dict(os.environ, XDG_CACHE_HOME=str(cache)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def concurrent_cold_runs(folder: Path) -> list[tuple[int, list[tuple[str, str, str]], str]]:
    """Start CONCURRENT_RUNS harnesses at once on an empty cache in `folder`; for each: its exit code, its
    (checkpoint, outcome, reason) verdicts, and its output."""
    outs = [folder / f"out{n}" for n in range(CONCURRENT_RUNS)]
    runs = [start_run(folder / "cache", out) for out in outs]
    results = []
    for run, out in zip(runs, outs):
        output = run.communicate(timeout=300)[0]
        doc = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {"verdicts": []}
        results.append((run.returncode, [(v["checkpoint"], v["outcome"], v["reason"]) for v in doc["verdicts"]], output))
    return results


def all_pass(result: tuple[int, list[tuple[str, str, str]], str]) -> bool:
    code, verdicts, _ = result
    return code == 0 and bool(verdicts) and all(outcome == "PASS" for _, outcome, _ in verdicts)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder for this test (XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return cache_dir()


def require_c_and_procmem(tmp_path, monkeypatch) -> None:
    """Skip unless this machine builds the C target and reads memory with procmem (checked on a cache of its
    own, so the cache under test stays empty)."""
    with monkeypatch.context() as scoped:
        scoped.setenv("XDG_CACHE_HOME", str(tmp_path / "probe-cache"))
        require("c", "procmem")


def test_harnesses_started_together_on_an_empty_cache_all_pass(tmp_path, monkeypatch):
    require_c_and_procmem(tmp_path, monkeypatch)
    results = concurrent_cold_runs(tmp_path)
    assert [r for r in results if not all_pass(r)] == []
    entries = sorted(p.name for p in (tmp_path / "cache" / "remanence" / "targets").iterdir())
    assert len(entries) == 2 and entries[1] == entries[0] + ".lock"   # one entry, its lock, no staging left


def entry_of(program) -> Path:
    """The cache entry (folder) a built target lives in."""
    return Path(program.command[-1]).parent


def binary_is_whole(entry: Path, built_size: int) -> None:
    """The entry's binary is as a build left it: its size, executable, and it lists its scenarios."""
    binary = entry / "remanence-target-c"
    assert binary.stat().st_size == built_size and os.access(binary, os.X_OK)
    listing = subprocess.run([str(binary), "--list"], capture_output=True, text=True)
    assert listing.returncode == 0 and "malloc.nowipe" in listing.stdout.split()


def make_unreadable_mode(binary: Path) -> None:
    binary.chmod(0o644)


def truncate(binary: Path) -> None:
    os.truncate(binary, binary.stat().st_size // 2)


def overwrite_with_garbage(binary: Path) -> None:
    """Same size and mode, so only running it (--list) can tell."""
    binary.write_bytes(b"\x7fELF" + b"\xff" * (binary.stat().st_size - 4))


@pytest.mark.parametrize("damage", [make_unreadable_mode, truncate, overwrite_with_garbage])
def test_a_damaged_c_binary_is_rebuilt(cache, damage):
    try:
        entry = entry_of(build_target("c"))
    except TargetUnavailable as e:
        pytest.skip(f"c target unavailable here: {e}")
    built_size = (entry / "remanence-target-c").stat().st_size
    damage(entry / "remanence-target-c")
    program = build_target("c")
    assert entry_of(program) == entry and "malloc.nowipe" in program.entries
    binary_is_whole(entry, built_size)


def test_the_staging_folder_of_a_killed_build_is_cleaned_by_the_next_build(cache):
    try:
        entry = entry_of(build_target("c"))
    except TargetUnavailable as e:
        pytest.skip(f"c target unavailable here: {e}")
    built_size = (entry / "remanence-target-c").stat().st_size
    left_by_a_kill = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
    (left_by_a_kill / "remanence-target-c").write_bytes(b"half a binary")
    make_unreadable_mode(entry / "remanence-target-c")   # so that the next call builds
    build_target("c")
    assert not left_by_a_kill.exists()
    binary_is_whole(entry, built_size)


def processes_naming(text: str) -> dict[int, list[str]]:
    """pid -> argv of the processes whose argv mentions `text`."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue                                    # exited meanwhile
        if any(text in arg for arg in argv):
            found[int(cmdline.parent.name)] = argv
    return found


def wait_for(condition, seconds: float):
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def builders_of(staging: Path) -> set[str]:
    """Names of the programs (make, the compiler) working on a staging folder."""
    return {Path(argv[0]).name for argv in processes_naming(str(staging)).values()}


def test_a_killed_harness_stops_its_build_and_the_next_build_cleans_up(tmp_path, monkeypatch):
    require_c_and_procmem(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    harness = subprocess.Popen([sys.executable, "-c", "from remanence.targets import build_target; build_target('c')"],
                               cwd=PROJECT_ROOT, env=dict(os.environ, XDG_CACHE_HOME=str(cache)))
    try:
        staging = wait_for(lambda: next((cache / "remanence" / "targets").glob("c-*.tmp-*"), None), 30)
        assert staging is not None, "the build never started"
        # the compiler itself, not the recipe's `mkdir -p` before it: killed during that mkdir, make would leave
        # nothing at work to tell a prompt death from a late one
        assert wait_for(lambda: "make" in (at_work := builders_of(staging)) and at_work - {"make", "mkdir"}, 30), \
            "make never started the compiler"
    finally:
        harness.kill()
        harness.wait()
    # make dies with the harness at once, while the compiler it started is still at work (the compiler only
    # finishes the file it writes into the staging folder, which the next build removes)
    assert wait_for(lambda: builders_of(staging) and "make" not in builders_of(staging), 10), \
        "make outlived the harness until the compiler was done"
    assert wait_for(lambda: not builders_of(staging), 30)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    entry = entry_of(build_target("c"))
    assert not staging.exists()
    assert sorted(p.name for p in entry.parent.iterdir()) == sorted([entry.name, entry.name + ".lock"])


def test_a_file_deleted_from_the_python_targets_venv_is_reinstalled(cache):
    try:
        entry = entry_of(build_target("python"))
    except TargetUnavailable as e:
        pytest.skip(f"python target unavailable here: {e}")
    [module] = entry.glob("venv/lib/python*/site-packages/nacl/public.py")
    module.unlink()
    program = build_target("python")
    assert module.is_file()
    probe = subprocess.run([program.command[0], "-E", "-s", "-c", "import nacl.public"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[-1].strip())
    parser.add_argument("--trials", type=int, default=10)
    trials = parser.parse_args().trials
    passed = 0
    for trial in range(trials):
        with tempfile.TemporaryDirectory() as folder:
            results = concurrent_cold_runs(Path(folder))
        passed += sum(map(all_pass, results))
        for code, verdicts, output in (r for r in results if not all_pass(r)):
            print(f"trial {trial}: exit {code}, {sorted({(o, reason) for _, o, reason in verdicts})}, {output[-300:]!r}")
    print(f"{passed} of {trials * CONCURRENT_RUNS} runs PASS")
