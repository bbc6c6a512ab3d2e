"""Every routine task: ``nox -s tests``, ``lint``, ``demo``, ``bench``, ``docs``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """Install miscore with its dev extra and run the test suite."""
    session.install(".[dev]")
    # two processes, each taking whole test files (module fixtures are built once): the
    # suite waits on subprocesses and imports much of the time, so a second one fills it
    args = session.posargs or ["-n", "2", "--dist", "loadfile"]
    session.run("pytest", *args, env={"TF_CPP_MIN_LOG_LEVEL": "2"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format), mypy, and the import contracts (layers, no cycles, public API)."""
    session.install(".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "miscore", "plugins")
    session.run("lint-imports")


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the reference pages from the code, then build the site into site/."""
    session.install(".", "mkdocs")  # the built-in theme: the build needs no network
    session.run("python", "docs/generate.py")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def demo(session: nox.Session) -> None:
    """Synthetic data -> train -> predict -> evaluate -> report (``--quick`` via posargs)."""
    session.install(".")
    if not session.posargs:
        shutil.rmtree("demo-out", ignore_errors=True)  # the previous demo's output
    session.run("miscore", "demo", *(session.posargs or ["--out", "demo-out"]))


#: The peers' versions the figures in docs/benchmarks.md were measured with. torch is pinned
#: to a CPU build: a bare ``torch`` would pull a multi-GB CUDA build.
PEERS = ("torch==2.13.0", "monai==1.6.1", "batchgenerators==0.25.5")


@nox.session
def bench(session: nox.Session) -> None:
    """Our benchmarks (no peers): figures in benchmarks/results, a table on stdout."""
    session.install(".[dask]")  # benchmarks/scaling.py: cache build and predict on Dask
    session.run(
        "python", "benchmarks/run_all.py", *session.posargs, env={"TF_CPP_MIN_LOG_LEVEL": "3"}
    )


@nox.session(name="bench-peers")
def bench_peers(session: nox.Session) -> None:
    """Ours against MONAI and batchgenerators, installed only in this session's venv."""
    session.install(".[dask]", *PEERS)
    python = str(Path(session.bin) / "python")
    session.run(
        "python",
        "benchmarks/run_all.py",
        "--peers",
        "--peers-python",
        python,
        *session.posargs,
        env={"TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@nox.session
def accuracy(session: nox.Session) -> None:
    """Dice of planned models on real images next to a threshold and the training mask.

    ``nox -s accuracy -- --budget 20m`` (default), ``-- --no-budget --epochs 2`` for a quick
    check, ``-- --only mni-brain``; see benchmarks/accuracy.py.
    """
    session.install(".")
    session.run(
        "python", "benchmarks/accuracy.py", *session.posargs, env={"TF_CPP_MIN_LOG_LEVEL": "3"}
    )


@nox.session
def distributed(session: nox.Session) -> None:
    """The tests that start a Dask cluster or several TensorFlow workers (two-worker training,
    LocalCluster cache build and prediction): minutes, so outside the default suite."""
    session.install(".[dev]")
    session.run(
        "pytest",
        "tests/distributed",
        "-m",
        "distributed",
        *session.posargs,
        env={"TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@nox.session
def fuzz(session: nox.Session) -> None:
    """The reliability tests with long fuzzing runs (MISCORE_FUZZ_EXAMPLES per reader)."""
    session.install(".[dev]")
    session.run(
        "pytest",
        "tests/reliability",
        *session.posargs,
        env={
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "MISCORE_FUZZ": "1",
            "MISCORE_FUZZ_EXAMPLES": os.environ.get("MISCORE_FUZZ_EXAMPLES", "2000"),
        },
    )
