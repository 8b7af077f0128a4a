"""Create or update one virtual environment per peer library, with torch pinned by constraints.txt.

The peers' own pins collide with ours, so each gets a venv under ``bench-scratch/`` (git-ignored).
Every install goes through ``constraints.txt`` (torch==2.13.0, the CPU wheel on this machine's
disk): an unpinned torch would pull a multi-GB CUDA build. A venv whose stamp matches the
requirements and constraints it was built from is left alone, so a rerun costs seconds. Needs
nothing but PyPI.

Run:  .venv/bin/python benchmarks/peers/setup_envs.py [--peer deepctr-torch] [--force]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import venv
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEERS_DIR = Path(__file__).resolve().parent
SCRATCH = REPO / "bench-scratch"
CONSTRAINTS = REPO / "constraints.txt"
STAMP = ".peer-requirements.json"
LOG = "install.log"
SHARED_REQUIREMENTS = ("pandas", "polars", "pyarrow", "psutil", "scikit-learn")
REPORTED = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "polars",
    "pyarrow",
    "scikit-learn",
    "psutil",
)


@dataclass(frozen=True)
class Peer:
    """A peer library: its venv folder, what to install there, and the module to import."""

    name: str
    venv: str
    requirements: tuple[str, ...]
    module: str
    # run before the import check, as the runner does before its imports
    prelude: str = (
        "from torchvision_compat import allow_torchvision_without_ops\n"
        "allow_torchvision_without_ops()\n"
    )

    @property
    def path(self) -> Path:
        """The venv's folder."""
        return SCRATCH / self.venv

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.path / "bin" / "python"


PEERS = (
    Peer(
        name="pytorch-widedeep",
        venv="venv-pwd",
        # 1.7.0 accepts torch 2.13. It pins numpy<2, and pyarrow 26 needs NumPy 2.
        requirements=("pytorch-widedeep==1.7.0", "pyarrow<26"),
        module="pytorch_widedeep",
    ),
    Peer(
        name="deepctr-torch",
        venv="venv-deepctr",
        # 0.3.0 accepts torch 2.13. It imports requests without declaring it.
        requirements=("deepctr-torch==0.3.0", "requests"),
        module="deepctr_torch",
    ),
    Peer(
        name="tensorflow-cpu",
        venv="venv-keras",
        # the notebook's framework; its runner imports no torch (peer_harness does not need it)
        requirements=("tensorflow-cpu==2.21.0",),
        module="tensorflow",
        prelude="",
    ),
)


def requirements(peer: Peer) -> list[str]:
    """What pip installs into the peer's venv."""
    return [*peer.requirements, *SHARED_REQUIREMENTS]


def wanted(peer: Peer) -> dict[str, object]:
    """What a venv is built from: its requirements and the constraints' text."""
    return {"requirements": requirements(peer), "constraints": CONSTRAINTS.read_text()}


def is_current(peer: Peer) -> bool:
    """Whether the venv exists and its stamp matches what it would be built from now."""
    stamp = peer.path / STAMP
    if not (peer.python.exists() and stamp.exists()):
        return False
    return json.loads(stamp.read_text()) == wanted(peer)


def install(peer: Peer) -> float:
    """Create the venv if needed and pip-install into it; the seconds it took."""
    started = time.perf_counter()
    if not peer.python.exists():
        venv.create(peer.path, with_pip=True)
    pip = [str(peer.python), "-m", "pip", "install", "--progress-bar", "off"]
    command = [*pip, "-c", str(CONSTRAINTS), *requirements(peer)]
    log = peer.path / LOG
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"{peer.name}: pip install failed ({log}):\n{tail}")
    (peer.path / STAMP).write_text(json.dumps(wanted(peer), indent=2))
    return time.perf_counter() - started


def versions(peer: Peer) -> dict[str, str]:
    """Installed versions of the peer and of the packages the benchmark cares about."""
    script = (
        "import json, importlib.metadata as m\n"
        "def v(name):\n"
        "    try: return m.version(name)\n"
        "    except m.PackageNotFoundError: return 'not installed'\n"
        f"print(json.dumps({{n: v(n) for n in {[peer.name, *REPORTED]!r}}}))"
    )
    out = subprocess.run(
        [str(peer.python), "-c", script], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def check_import(peer: Peer) -> None:
    """Import the peer in its venv the way its runner does, or stop with the error."""
    script = f"{peer.prelude}import {peer.module}\n"
    done = subprocess.run(
        [str(peer.python), "-c", script], cwd=PEERS_DIR, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{peer.name}: import {peer.module} failed:\n{done.stderr[-2000:]}")


def set_up(peer: Peer, force: bool) -> None:
    """Install the peer unless its venv is current, check the import, print the versions."""
    if force or not is_current(peer):
        print(f"{peer.name}: installing into {peer.path} ...", flush=True)
        print(f"{peer.name}: installed in {install(peer):.0f} s")
    else:
        print(f"{peer.name}: {peer.path} is up to date, skipped")
    check_import(peer)
    for name, found in versions(peer).items():
        print(f"  {name:18} {found}")


def main() -> None:
    """Set up the chosen peers (all by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=[peer.name for peer in PEERS], action="append")
    parser.add_argument("--force", action="store_true", help="reinstall even if up to date")
    args = parser.parse_args()
    if not CONSTRAINTS.exists():
        sys.exit(f"{CONSTRAINTS} is missing: it pins torch to the CPU build")
    for peer in PEERS:
        if args.peer is None or peer.name in args.peer:
            set_up(peer, args.force)


if __name__ == "__main__":
    main()
