"""Kill test: `proda train` killed with SIGKILL at random moments (and once in the middle of a checkpoint
write) and resumed with the same command ends bit-identical to an uninterrupted run, with no torn file.

The deterministic kill inside a checkpoint write uses the test hook of :func:`proda.io.atomic_write`:
``PRODA_TEST_PAUSE_IN_ATOMIC_WRITE=SECONDS`` with ``PRODA_TEST_PAUSE_IN_ATOMIC_WRITE_MATCH=GLOB`` makes the
child announce on stderr, then sleep, between the complete temporary file and its rename; the test kills it
there. The other kills come from a seeded random generator: one at a random moment of the start-up
(imports, resume, pre-flight, config and metrics rewrites), the others a random fraction of an iteration
after a randomly chosen iteration has been logged. The run folder is then checked file by file, and the
resumed run's checkpoints and metrics history against those of an uninterrupted run.

The end-to-end test is marked ``slow`` (20-60 s on 2 cores, mostly process start-ups): it runs by default
(CI included); ``-m "not slow"`` leaves it out of quick local runs.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from fixtures import write_cityscapes, write_gta5
from proda.checkpoint_io import MAGIC, load_checkpoint

REPO = Path(__file__).parents[2]
CONFIG = REPO / "proda" / "configs" / "synthetic" / "source_only.yaml"
IDS = [7, 8, 11, 21, 23, 26, 0]
ITERATIONS = 16
EVAL_EVERY = 6  # evaluations (and best.pth candidates) at 6, 12 and 16
STARTUP_TIMEOUT = 120.0


def command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "proda", "train", str(CONFIG),
            f"data.source_root={data / 'gta5'}", f"data.target_root={data / 'cityscapes'}", f"run.out_dir={out}",
            "data.crop_size=[32,16]", "data.batch_size=2", "model.width=8", "model.head_mid=16",
            f"optim.iterations={ITERATIONS}", f"run.eval_every={EVAL_EVERY}", "run.checkpoint_every=2",
            "run.keep_last=2", "run.log_every=1", "run.tensorboard=false", "--no-progress"]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODA_TEST_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


class Child:
    """One `proda train` process with its output in files (no pipe can fill up and block it)."""

    def __init__(self, cmd: list[str], logs: Path, tag: str, env: dict[str, str]):
        self.out, self.err = logs / f"{tag}.out", logs / f"{tag}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def kill(self) -> bool:
        """SIGKILL; True if the process was still running (i.e. really killed)."""
        alive = self.proc.poll() is None
        if alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return alive

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def logged_iteration(run: Path) -> int:
    """Last training iteration in metrics.jsonl (a torn last line is skipped)."""
    path, last = run / "metrics.jsonl", 0
    if not path.is_file():
        return 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("kind") == "train":
            last = row["iteration"]
    return last


def wait_for(condition, child: Child, what: str, timeout: float = STARTUP_TIMEOUT) -> bool:
    """Poll until ``condition()``; False if the child exited first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if child.proc.poll() is not None:
            return condition()
        time.sleep(0.005)
    child.kill()
    raise AssertionError(f"timed out waiting for {what}; stderr:\n{child.stderr()}")


def assert_no_torn_files(run: Path) -> None:
    """Every file of the run folder (sub-folders included) is complete; no temporary file is left."""
    names = sorted(p.name for p in run.iterdir())
    assert {"latest.pth", "best.pth", "config.yaml", "metrics.jsonl", "result.json"} <= set(names), names
    for path in sorted(run.rglob("*")):
        assert not path.name.startswith("."), f"temporary file left: {path}"
        if path.is_dir():
            continue
        if path.suffix == ".pth":
            assert path.read_bytes().startswith(MAGIC), path
            load_checkpoint(path)  # verifies the SHA-256
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".png":
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None, path
        else:
            raise AssertionError(f"unexpected file in the run folder: {path}")


def assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def history(run: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "sec_per_iter"} for row in rows]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    data = tmp_path / "data"
    write_gta5(data / "gta5", n=6, size=(48, 24), ids=IDS)
    write_cityscapes(data / "cityscapes", per_city=2, size=(48, 24), ids=IDS)
    logs = tmp_path / "logs"
    logs.mkdir()

    ref = tmp_path / "reference"
    t0 = time.monotonic()
    child = Child(command(data, ref), logs, "reference", child_env())
    wait_for(lambda: "start_iteration=" in child.out.read_text(), child, "the reference run's training header")
    startup = time.monotonic() - t0  # launch to first iteration: imports, model, pre-flight, data streams
    assert child.wait() == 0, child.stderr()

    run = tmp_path / "killed"
    cmd = command(data, run)
    rng = random.Random(20240607)
    kills = []

    # 1. Deterministic: killed in the middle of writing the checkpoint of iteration 6 (an evaluation, so
    #    best.pth follows it), after the temporary file is complete and before the rename.
    child = Child(cmd, logs, "kill_in_write", child_env(PRODA_TEST_PAUSE_IN_ATOMIC_WRITE="120",
                                                        PRODA_TEST_PAUSE_IN_ATOMIC_WRITE_MATCH="iter_0000006.pth"))
    assert wait_for(lambda: "proda test hook: pausing" in child.stderr(), child, "the pause in atomic_write")
    assert child.kill()
    kills.append("in the iteration-6 checkpoint write")
    assert [p.name for p in run.glob(".iter_0000006.pth.*.tmp")], "the kill should leave the temporary file"
    assert load_checkpoint(run / "latest.pth")["iteration"] == 4  # the old state, intact
    assert not (run / "best.pth").exists()

    # 2. At a random moment of the start-up (imports, resume, pre-flight, config and metrics rewrites).
    #    Start-up times vary with the machine's load: the kill comes at the header at the latest.
    child = Child(cmd, logs, "kill_at_random_time", child_env())
    deadline = time.monotonic() + rng.uniform(0.2, 0.95) * startup
    wait_for(lambda: time.monotonic() >= deadline or "start_iteration=" in child.out.read_text(), child, "start-up")
    if child.kill():
        kills.append("at a random moment of the start-up")

    # 3. A random fraction of an iteration after a randomly chosen iteration past the one it resumed from.
    missed = []  # rounds whose process ended by itself (diagnostics for the assertion below)
    for n in range(3):
        child = Child(cmd, logs, f"kill_{n}", child_env())
        if not wait_for(lambda: "start_iteration=" in child.out.read_text(), child, "the training header"):
            missed.append(f"round {n}: exit {child.proc.returncode} before training: {child.stderr()[-2000:]}")
            break  # finished already (or failed: the final run below would say so)
        start = int(child.out.read_text().split("start_iteration=")[1].split()[0])
        target = min(ITERATIONS - 1, start + rng.randint(1, 4))
        wait_for(lambda: logged_iteration(run) >= target, child, f"iteration {target}")
        time.sleep(rng.uniform(0.0, 0.12))  # an iteration takes ~0.06 s here, a checkpoint write included
        if child.kill():
            kills.append(f"resumed at {start}, killed after {logged_iteration(run)} iterations")
        else:
            missed.append(f"round {n}: resumed at {start}, target {target}, exit {child.proc.returncode}, "
                          f"{logged_iteration(run)} logged: {child.stderr()[-2000:]}")

    print("killed:", "; ".join(kills))
    assert len(kills) >= 3, (kills, missed)  # the machine may be slow or fast, but most kills land
    child = Child(cmd, logs, "final", child_env())
    assert child.wait() == 0, child.stderr()
    assert "Traceback" not in child.stderr()

    assert_no_torn_files(run)
    for name in ("latest.pth", "best.pth"):
        a, b = load_checkpoint(ref / name), load_checkpoint(run / name)
        assert a["iteration"] == b["iteration"] and a["best_miou"] == b["best_miou"], name
        for key in ("model", "optimizers", "modules", "stage_state", "rng", "last_eval"):
            assert_same_tensors(a[key], b[key], f"{name}:{key}")
    assert load_checkpoint(run / "latest.pth")["iteration"] == ITERATIONS
    assert sorted(p.name for p in run.glob("iter_*.pth")) == ["iter_0000014.pth", "iter_0000016.pth"]
    # one history, identical to the uninterrupted run's (losses and evaluations, every iteration once)
    assert history(run) == history(ref)
    assert [r["iteration"] for r in history(run) if r["kind"] == "train"] == list(range(1, ITERATIONS + 1))
    result_a, result_b = (json.loads((p / "result.json").read_text()) for p in (ref, run))
    assert result_a["final"] == result_b["final"] and result_a["best_miou"] == result_b["best_miou"]


# --------------------------------------------------------------------------------- the pieces, in-process
def test_stale_temp_files_of_a_run_are_removed_and_nothing_else(tmp_path):
    from proda.engine.run_checkpoints import remove_stale_run_temp_files

    stale = [".latest.pth.k2j_x9a.tmp", ".iter_0000006.pth.abc123.tmp", ".best.pth.link", ".iter_0000004.pth.link",
             "..best.pth.link.q1w2e3.tmp", ".metrics.jsonl.zz9.tmp", ".config.yaml.a.tmp", ".result.json.b.tmp",
             "panels/.iter_0000006.png.c_d.tmp"]
    kept = ["latest.pth", "best.pth", ".prototypes.pth.abc.tmp", ".hidden", "notes.txt", "pseudo_soft/.x.soft.abc.tmp"]
    for name in stale + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_run_temp_files(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in removed) == sorted(stale)
    assert all((tmp_path / name).exists() for name in kept)
    assert not any((tmp_path / name).exists() for name in stale)


def test_latest_is_switched_last(tmp_path, monkeypatch):
    """A process dying between the links of a checkpoint keeps the previous latest.pth, whose best_miou is
    never newer than best.pth (a resume then redoes the iterations and rewrites the others)."""
    from proda.engine import run_checkpoints as ck

    ck.save_run_checkpoint(tmp_path, {"iteration": 2, "best_miou": 1.0}, 2, keep_last=2, is_best=True)
    real = ck._link_or_copy

    def die_before_latest(src, dst):
        if dst.name == "latest.pth":
            raise KeyboardInterrupt  # stands for SIGKILL between the two links
        real(src, dst)

    monkeypatch.setattr(ck, "_link_or_copy", die_before_latest)
    with pytest.raises(KeyboardInterrupt):
        ck.save_run_checkpoint(tmp_path, {"iteration": 4, "best_miou": 2.0}, 4, keep_last=2, is_best=True)
    assert load_checkpoint(tmp_path / "latest.pth")["iteration"] == 2
    assert load_checkpoint(tmp_path / "best.pth")["iteration"] == 4
    monkeypatch.setattr(ck, "_link_or_copy", real)
    ck.save_run_checkpoint(tmp_path, {"iteration": 4, "best_miou": 2.0}, 4, keep_last=2, is_best=True)  # the redo
    assert [load_checkpoint(tmp_path / n)["iteration"] for n in ("latest.pth", "best.pth", "iter_0000004.pth")] == [4] * 3
    ck.save_run_checkpoint(tmp_path, {"iteration": 6, "best_miou": 2.0}, 6, keep_last=0, is_best=False)
    assert load_checkpoint(tmp_path / "latest.pth")["iteration"] == 6 and not (tmp_path / "iter_0000006.pth").exists()
