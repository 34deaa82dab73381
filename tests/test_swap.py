"""The swap snapshot method on real parts: a real process paged out to a real swap file, read back past the page
cache; the area always swapped off and deleted; a killed harness's area released; the method SKIPped with its
reason where the machine forbids it."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from remanence import doctor, workspace as workspace_module
from remanence.cli import main
from remanence.process import stat_fields
from remanence.snapshot import method_unavailable, scratch, swap, take_snapshot
from remanence.targets import TargetUnavailable, build_target

pytestmark = pytest.mark.skipif(method_unavailable("swap") is not None, reason=f"swap: {method_unavailable('swap')}")

# Two private anonymous pages: a plain one holding the marker given on stdin, and an mlocked one that getrandom()
# fills in place (so its bytes exist nowhere else in the process); prints both addresses.
HOLDER = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
addresses = []
pages = [mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) for _ in range(2)]
for page in pages:
    anchor = ctypes.c_char.from_buffer(page)
    addresses.append(ctypes.addressof(anchor) + 100)
    del anchor
marker = bytes.fromhex(sys.stdin.readline())
pages[0][100:100 + len(marker)] = marker
if libc.mlock(ctypes.c_void_p(addresses[1] - 100), ctypes.c_size_t(mmap.PAGESIZE)) != 0 \
        or libc.getrandom(ctypes.c_void_p(addresses[1]), ctypes.c_size_t(24), 0) != 24:
    sys.exit(3)
print(*addresses, flush=True)
sys.stdin.read()
"""


def start_holder(started: list[subprocess.Popen]) -> tuple[subprocess.Popen, bytes, int, bytes, int]:
    """A process with a plain and a locked page: (process, plain marker, its address, locked marker, its address)."""
    plain = secrets.token_bytes(24)
    process = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    started.append(process)
    process.stdin.write(plain.hex() + "\n")
    process.stdin.flush()
    plain_at, locked_at = map(int, process.stdout.readline().split())
    with open(f"/proc/{process.pid}/mem", "rb", buffering=0) as memory:
        memory.seek(locked_at)
        locked = memory.read(24)
    return process, plain, plain_at, locked, locked_at


@pytest.fixture
def holders():
    started: list[subprocess.Popen] = []
    yield lambda: start_holder(started)
    for process in started:
        process.kill()
        process.wait()


@pytest.fixture
def holder(holders):
    return holders()


def our_swap_files(under: Path) -> list[str]:
    """The swap method's areas on under `under`: this test's (other tests, on other xdist workers, may have theirs on
    at the same moment)."""
    return [path for path, _ in swap.active_swap_files() if Path(path).name == swap.SWAP_FILE
            and Path(path).is_relative_to(under)]


def vm_swap_kb(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmSwap:"))
    return int(line.split()[1])


def test_a_page_is_found_at_its_address_in_the_swap_image_and_a_locked_page_is_a_gap(holder, tmp_path):
    process, plain, plain_at, locked, locked_at = holder
    snapshot = swap.take_swap(process.pid, tmp_path)
    try:
        region = snapshot.region_at(plain_at)
        assert region is not None and region.locked is False
        image = Path(snapshot.path).read_bytes()
        at = region.file_offset + plain_at - region.start
        assert image[at:at + len(plain)] == plain
        assert locked not in image
        assert snapshot.region_at(locked_at) is None
        gap = next(g for g in snapshot.gaps if g.contains(locked_at))
        assert (gap.kind.value, gap.reason) == ("excluded", "locked in RAM (mlock): cannot be paged out")
    finally:
        scratch.discard(snapshot.path)
    # swapped off (the pages came back) and deleted
    assert our_swap_files(tmp_path) == [] and list(tmp_path.iterdir()) == []
    assert vm_swap_kb(process.pid) == 0


def test_another_process_paged_out_to_the_same_area_stays_out_of_the_image(holders, tmp_path, monkeypatch):
    target, other = holders(), holders()
    page_out = swap.page_out

    def with_the_other_too(pid, spans):
        page_out(pid, spans)
        page = other[2] - 100
        page_out(other[0].pid, [(page, page + swap.PAGE_SIZE)])
        assert swap._pagemap(str(other[0].pid), page, page + swap.PAGE_SIZE)[0] & 1 << 62   # it is in swap now
    monkeypatch.setattr(swap, "page_out", with_the_other_too)
    snapshot = swap.take_swap(target[0].pid, tmp_path)
    try:
        image = Path(snapshot.path).read_bytes()
        assert target[1] in image and other[1] not in image
    finally:
        scratch.discard(snapshot.path)
    assert vm_swap_kb(other[0].pid) == 0    # swapoff brought its page back too


def test_the_area_is_swapped_off_and_deleted_after_an_error_inside(holder, tmp_path, monkeypatch):
    process = holder[0]

    def failing(*args):
        assert our_swap_files(tmp_path) == [str(tmp_path / swap.SWAP_FILE)]   # it was on when the error came
        raise RuntimeError("reading the slots failed")
    monkeypatch.setattr(swap, "_copy_slots", failing)
    with pytest.raises(RuntimeError, match="reading the slots failed"):
        swap.take_swap(process.pid, tmp_path)
    assert our_swap_files(tmp_path) == [] and list(tmp_path.iterdir()) == []
    assert vm_swap_kb(process.pid) == 0


def test_take_snapshot_swap_of_a_process(holder):
    process, plain, plain_at, _, _ = holder
    snapshot = take_snapshot("swap", process.pid)
    try:
        assert snapshot.method == "swap" and snapshot.region_at(plain_at) is not None
        assert any("paged out with MADV_PAGEOUT" in note for note in snapshot.notes)
    finally:
        scratch.discard(snapshot.path)
    assert our_swap_files(workspace_module.workspace().root) == []


def test_two_releases_of_one_area_each_return_once_it_is_off(tmp_path):
    """Two harnesses may release the same abandoned area at once; the one whose swapoff comes second (EINVAL: the
    other's is under way) must not zero the file under the kernel's reads, nor return while the area is still on."""
    still_on = []
    for attempt in range(5):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        both = threading.Barrier(2)

        def release():
            both.wait()
            swap.release_swap_under(folder)
            still_on.append(our_swap_files(folder))
        with swap.swap_area(folder, 64):         # its own release at the end finds the area gone
            releasers = [threading.Thread(target=release) for _ in range(2)]
            for releaser in releasers:
                releaser.start()
            for releaser in releasers:
                releaser.join()
        assert list(folder.iterdir()) == []
    assert still_on == [[]] * 10


# A harness that turns a swap area on in its workspace and waits to be killed; prints its sentinel's pid and the file.
KILLED_HARNESS = textwrap.dedent(r"""
    import sys, time
    from remanence.snapshot import swap
    from remanence.workspace import workspace
    space = workspace()
    with swap.swap_area(space.root, 64) as area:
        print(space._sentinel, area.path, flush=True)
        time.sleep(3600)
""")


def start_killed_harness(tmp_path: Path) -> tuple[subprocess.Popen, int, Path]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    harness = subprocess.Popen([sys.executable, "-c", KILLED_HARNESS], stdout=subprocess.PIPE, text=True, env=env)
    sentinel, path = harness.stdout.readline().split()
    assert our_swap_files(tmp_path) == [path]
    return harness, int(sentinel), Path(path)


def wait_gone(pid: int) -> None:
    """Wait until the orphaned sentinel `pid` has ended: reaped here if this process is its subreaper, else as seen
    in /proc."""
    try:
        os.waitpid(pid, 0)
        return
    except ChildProcessError:
        pass
    while state(pid) not in ("Z", "gone"):
        time.sleep(0.01)


def state(pid: int) -> str:
    """The process's state letter, or "gone"."""
    try:
        return stat_fields(f"/proc/{pid}/stat")[0]
    except OSError:
        return "gone"


def test_a_sigkilled_harness_s_swap_area_is_released_at_the_next_start(tmp_path, monkeypatch):
    harness, sentinel, path = start_killed_harness(tmp_path)
    os.kill(sentinel, signal.SIGKILL)        # its sentinel too: only the next start is left to clean up
    harness.kill()
    harness.wait()
    wait_gone(sentinel)
    assert our_swap_files(tmp_path) == [str(path)] and path.exists()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    removed = workspace_module.remove_stale()     # what the next harness does as its workspace starts
    assert str(path.parent) in removed
    assert our_swap_files(tmp_path) == [] and not path.parent.exists()


def test_a_sigkilled_harness_s_sentinel_releases_its_swap_area(tmp_path):
    harness, sentinel, path = start_killed_harness(tmp_path)
    harness.kill()
    harness.wait()
    wait_gone(sentinel)
    assert our_swap_files(tmp_path) == [] and not path.parent.exists()


def test_doctor_lists_the_swap_method(monkeypatch):
    check = doctor.check_swap()
    assert (check.check, check.status) == ("swap", "ok") and "MADV_PAGEOUT" in check.detail
    monkeypatch.setattr(swap, "swap_unavailable", lambda: "the kernel refused swapon: EPERM")
    check = doctor.check_swap()
    assert (check.status, check.detail, check.affects) == ("missing", "the kernel refused swapon: EPERM", ["method:swap"])


@pytest.fixture(scope="module")
def c_target():
    try:
        return build_target("c")
    except TargetUnavailable as e:
        pytest.skip(f"C target unavailable here: {e}")


def run_scenarios(tmp_path: Path, methods: str, *names: str) -> dict[tuple[str, str], dict]:
    main(["run", "--out", str(tmp_path), "--method", methods, "-q", *names])
    doc = json.loads((tmp_path / "results.json").read_text())
    return {(v["scenario"], v["checkpoint"]): v for v in doc["verdicts"] if v["method"] == "swap"}


def test_the_mlock_promise_holds_in_swap_and_fails_with_mlock(c_target, tmp_path):
    # The scenarios list kernel-core before swap: the runner takes the method that ends the target last.
    verdicts = run_scenarios(tmp_path, "procmem,kernel-core,swap", "sodium.live", "sodium.mlock_denied")
    live, denied = verdicts["sodium.live", "in_use"], verdicts["sodium.mlock_denied", "in_use"]
    assert (live["outcome"], live["expect"]) == ("PASS", "absent"), live["reason"]
    assert "locked in RAM (mlock): cannot be paged out" in live["reason"] and live["canary_seen"]
    assert (denied["outcome"], denied["expect"]) == ("PASS", "present"), denied["reason"]
    assert "[intended region" in denied["reason"]
    assert our_swap_files(workspace_module.workspace().root) == []


def test_an_unavailable_swap_method_is_skipped_with_its_reason(c_target, tmp_path, monkeypatch):
    monkeypatch.setattr(swap, "swap_unavailable", lambda: "needs CAP_SYS_ADMIN (root) to swapon a swap file")
    verdict = run_scenarios(tmp_path, "procmem,swap", "sodium.live")["sodium.live", "in_use"]
    assert verdict["outcome"] == "SKIP"
    assert verdict["reason"] == "needs CAP_SYS_ADMIN (root) to swapon a swap file"


def test_an_area_left_by_a_killed_harness_does_not_stop_another_harness_s_snapshot(holder, tmp_path, monkeypatch):
    """Harness and sentinel SIGKILLed with an area on: a harness already running (no start of its own to clean up)
    releases it when it next takes a swap snapshot, instead of an ERROR for a rival area."""
    (tmp_path / "killed").mkdir()
    (tmp_path / "mine").mkdir()
    left_by, sentinel, path = start_killed_harness(tmp_path / "killed")
    os.kill(sentinel, signal.SIGKILL)
    wait_gone(sentinel)
    left_by.kill()      # not reaped yet: its lock is gone, its pid still names it (a zombie)
    while state(left_by.pid) != "Z":
        time.sleep(0.01)
    assert our_swap_files(tmp_path / "killed") == [str(path)]
    process, plain, plain_at, _, _ = holder
    try:
        snapshot = swap.take_swap(process.pid, tmp_path / "mine")
    finally:
        left_by.wait()
    try:
        region = snapshot.region_at(plain_at)
        image = Path(snapshot.path).read_bytes()
        assert region is not None and plain in image
    finally:
        scratch.discard(snapshot.path)
    assert our_swap_files(tmp_path) == [] and not path.exists()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "killed"))
    assert str(path.parent) in workspace_module.remove_stale()     # its cgroup and folder: the next start's work
