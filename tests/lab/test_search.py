"""``vitmim search``: an Optuna study of the scratch recipe, stored on disk, run as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import cliproc
import optuna
import pytest
import yaml
from grid_specs import REPO

from vitmim.config import load_config
from vitmim.errors import UserError
from vitmim.lab.search import load_search_spec

TINY = {
    "model.embed_dim": 32,
    "model.depth": 1,
    "model.num_heads": 2,
    "data.classes": 2,
    "finetune.batch_size": 8,
}


def write_spec(tmp: Path, **more) -> Path:
    spec = {
        "storage": str(tmp / "results" / "study.db"),
        "runs": str(tmp / "runs"),
        "config": TINY,
        "subsets": [0, 1],
        "budget_core_hours": 1.0,
        "min_epochs": 1,
        "start": {"finetune.lr": 1.0e-3, "finetune.epochs": 2},
        "space": {
            "finetune.lr": ["log", 1.0e-4, 3.0e-3],
            "finetune.epochs": ["int", 2, 3],
            "finetune.drop_path": ["choice", 0.0, 0.1],
        },
        **more,
    }
    path = tmp / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def search_args(spec: Path, data: Path, *more: str) -> list[str]:
    return ["search", str(spec), "--data", str(data), *more]


def trials(spec: Path) -> list[optuna.trial.FrozenTrial]:
    storage = yaml.safe_load(spec.read_text())["storage"]
    return optuna.load_study(study_name=spec.stem, storage=f"sqlite:///{storage}").trials


def test_search_starts_from_its_recipe_and_continues_where_it_stopped(tmp_path, tiny_tin):
    # a start recipe that sets every key of the space: the next trial is the sampler's first draw
    start = {"finetune.lr": 1.0e-3, "finetune.epochs": 2, "finetune.drop_path": 0.0}
    spec = write_spec(tmp_path, start=start)
    readme = tmp_path / "results" / "README.md"  # a person's words, without a progress line
    readme.parent.mkdir()
    readme.write_text("# Why scratch gets its own recipe\n\nWords kept as they are.\n")
    first = cliproc.vitmim(*search_args(spec, tiny_tin, "--trials", "2"))
    assert first.returncode == 0, first.stderr[-2000:]
    done = trials(spec)
    assert (
        len(done) == 2
        and done[0].params
        == {"finetune.lr": 1.0e-3, "finetune.epochs": 2, "finetune.drop_path": 0.0}
        or done[0].params["finetune.lr"] == 1.0e-3
    )  # the start recipe, tried first
    assert sorted(done[0].intermediate_values) == [1, 2]  # reported after every epoch
    for t in done:
        assert t.user_attrs["core_s"] > 0
        if t.state == optuna.trial.TrialState.COMPLETE:  # the mean over both subsets
            finals = []
            for s in (0, 1):
                metrics = (
                    (
                        tmp_path
                        / "runs"
                        / f"trial{t.number:03d}"
                        / f"class_subset={s}"
                        / "metrics.jsonl"
                    )
                    .read_text()
                    .splitlines()
                )
                finals.append(yaml.safe_load(metrics[-1])["val_top1"])
            assert t.value == pytest.approx(sum(finals) / 2)
    recipe = yaml.safe_load((tmp_path / "results" / "scratch_recipe.yaml").read_text())
    best = max((t for t in done if t.value is not None), key=lambda t: t.value)
    assert recipe["scratch"]["finetune.epochs"] == best.params["finetune.epochs"]
    assert load_config(base={"scratch": recipe["scratch"]}).scratch  # a valid scratch section
    finished = sum(t.state == optuna.trial.TrialState.COMPLETE for t in done)
    spent = sum(t.user_attrs["core_s"] for t in done) / 3600
    progress = (
        f"**Progress:** 2 trials ({finished} finished, {2 - finished} stopped early by the "
        f"pruner); {spent:.1f} / 1 core-hours spent; best so far: mean val top-1 "
        f"{best.value:.2f} (trial {best.number})"
    )
    assert readme.read_text().splitlines() == [
        "# Why scratch gets its own recipe",
        "",
        "Words kept as they are.",
        "",
        progress,
    ]
    again = cliproc.vitmim(*search_args(spec, tiny_tin, "--trials", "1"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(trials(spec)) == 3 and "trial 2:" in again.stdout
    assert trials(spec)[2].params != trials(spec)[1].params  # a new draw, not a repeat
    lines = readme.read_text().splitlines()
    assert [ln for ln in lines if ln.startswith("**Progress:** ")] == [
        next(ln for ln in lines if ln.startswith("**Progress:** 3 trials ("))
    ]  # one line, kept current


def test_until_starts_no_trial_that_may_not_end_in_time_and_writes_no_recipe(tmp_path, tiny_tin):
    """Real trials: with a deadline two minutes away, a first trial starts (nothing to estimate
    from yet); once epochs have run, a trial that may run for 100,000 epochs does not start, and
    with budget left no recipe is written (the tuned arm waits for the whole search)."""
    space = {"finetune.lr": ["log", 1.0e-4, 3.0e-3], "finetune.epochs": ["int", 2, 100_000]}
    spec = write_spec(tmp_path, space=space)
    soon = time.strftime("%H:%M", time.localtime(time.time() + 150))
    first = cliproc.vitmim(*search_args(spec, tiny_tin, "--until", soon, "--trials", "1"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(trials(spec)) == 1 and "trial 0:" in first.stdout
    (tmp_path / "results" / "scratch_recipe.yaml").unlink()
    again = cliproc.vitmim(*search_args(spec, tiny_tin, "--until", soon))
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"past {soon}: left for a later invocation" in again.stdout
    assert "wrote" not in again.stdout
    assert len(trials(spec)) == 1
    assert not (tmp_path / "results" / "scratch_recipe.yaml").exists()


def test_an_epochs_time_is_its_cpu_time_on_its_threads_not_a_paused_wall_clock(tmp_path):
    """A job paused for 15 minutes (the campaign's jobs are, while the test suite runs) must not
    make every later trial look too long to start."""
    from vitmim.lab.search import _epoch_seconds

    epochs = [
        {"epoch": 1, "time_s": 900.0, "cpu_s": 6.0},  # paused: 15 min of wall, 6 s of CPU
        {"epoch": 2, "time_s": 3.5, "cpu_s": 7.0},
        {"epoch": 3, "time_s": 4.0},  # logged without its CPU time: the wall clock
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    (tmp_path / "manifest.json").write_text(json.dumps({"threads": 2}))
    assert _epoch_seconds(tmp_path) == [3.0, 3.5, 4.0]


def trial_processes(tmp: Path) -> list[int]:
    """Processes whose command line names a trial folder under ``tmp``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and str(tmp / "runs") in cmd:
            found.append(int(proc.name))
    return found


def epochs_logged(metrics: Path) -> list[dict]:
    """The epoch records of a fine-tune's metrics.jsonl so far (a line being written: not yet)."""
    records = []
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return [r for r in records if "epoch" in r]


def saved_epoch(metrics: Path) -> bool:
    """Whether a fine-tune has logged an epoch and saved the checkpoint that ends it.

    Any logged epoch will do: only the newest checkpoints are kept, so the first epoch's is
    gone once a busy machine lets two more epochs pass between two looks."""
    ckpts = metrics.parent / "checkpoints"
    return any((ckpts / f"step_{e['step']:08d}.json").exists() for e in epochs_logged(metrics))


@pytest.mark.parametrize("stop", ["machine", "user"])
def test_a_trial_cut_off_is_tried_again_from_where_it_stopped(tmp_path, tiny_tin, stop):
    """Cut off with its machine (the search killed) or by its user (Ctrl-C: SIGINT to the
    search and its fine-tunes), a trial is tried again by the next invocation, which resumes
    its fine-tunes and pays for each epoch once."""
    # long enough that the search is still running when its first epoch is saved, however
    # busy the machine: a three-epoch trial could end between two looks
    space = {"finetune.lr": ["log", 1.0e-4, 3.0e-3], "finetune.epochs": ["int", 2, 20]}
    spec = write_spec(tmp_path, heartbeat_s=1, start={"finetune.epochs": 20}, space=space)
    proc = subprocess.Popen(
        [*cliproc.FRESH, *search_args(spec, tiny_tin, "--trials", "1")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "runs" / "trial000" / "class_subset=0" / "metrics.jsonl"
    deadline = time.time() + 300
    while not saved_epoch(metrics) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the search ended before it could be stopped"
    if stop == "machine":
        proc.kill()  # the search is killed: its fine-tunes stop with it
    else:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    first_epoch = epochs_logged(metrics)[0]
    proc.wait()
    deadline = time.time() + 60
    while trial_processes(tmp_path) and time.time() < deadline:
        time.sleep(0.2)
    assert not trial_processes(tmp_path)
    if stop == "machine":
        time.sleep(3)  # the stopped trial's heartbeat is older than its grace period
    again = cliproc.vitmim(*search_args(spec, tiny_tin, "--trials", "1"))
    assert again.returncode == 0, again.stderr[-2000:]
    states = [t.state for t in trials(spec)]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert trials(spec)[1].params["finetune.epochs"] == 20  # the same recipe, tried again
    # ... from where the first try stopped: its first epoch was not run again
    assert epochs_logged(metrics)[0] == first_epoch
    assert [e["epoch"] for e in epochs_logged(metrics)] == list(range(1, 21))
    assert not (tmp_path / "runs" / "trial001").exists()
    spent = trials(spec)[1].user_attrs["core_s"]  # every epoch paid for once, by the retry
    dirs = (tmp_path / "runs" / "trial000").glob("class_subset=*")
    assert spent == pytest.approx(
        sum(e["cpu_s"] for d in dirs for e in epochs_logged(d / "metrics.jsonl"))
    )
    assert "core_s" not in trials(spec)[0].user_attrs
    if stop == "user":
        line = (tmp_path / "results" / "README.md").read_text()
        assert "2 trials (1 finished, 0 stopped early by the pruner, 1 interrupted" in line


@pytest.mark.parametrize(
    "more, message",
    [
        ({"bogus": 1}, "key bogus"),
        ({"subsets": []}, "key subsets"),
        ({"space": {"model.depth": ["int", 1, 2]}}, "key space.model.depth"),
        ({"space": {"finetune.lr": ["log", 1.0e-3]}}, "key space.finetune.lr"),
        ({"space": {"finetune.lr": ["log", -1.0, 1.0]}}, "finetune.lr"),
        ({"start": {"finetune.epochs": 0}}, "finetune.epochs"),
    ],
)
def test_bad_search_specs_are_refused_naming_the_key(tmp_path, more, message):
    with pytest.raises(UserError, match=message) as e:
        load_search_spec(write_spec(tmp_path, **more))
    assert "search.yaml" in str(e.value)


def test_the_shipped_search_spec_is_valid():
    spec = load_search_spec(REPO / "configs" / "search" / "scratch.yaml")
    assert spec.subsets == [1, 2] and spec.budget_core_hours <= 6
