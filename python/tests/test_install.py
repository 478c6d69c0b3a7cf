"""pip install --no-build-isolation . into a virtual environment, offline,
from a copy of the sources (meson-python writes into the tree it builds).
Marked `install`: it builds the project again (its own meson test)."""

import os
import subprocess
import sys
import tarfile
import io

import pytest

pytestmark = pytest.mark.install


def copy_sources(src, dst):
    """The sources as they are in the working tree: tracked and new files,
    not the build folders."""
    files = subprocess.run(["git", "-C", src, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], check=True, capture_output=True).stdout
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in filter(None, files.decode().split("\0")):
            path = os.path.join(src, name)
            if os.path.isfile(path):
                tar.add(path, arcname=name)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        tar.extractall(dst)


def test_pip_install_into_a_venv(tmp_path, env_path):
    src = tmp_path / "src"
    copy_sources(env_path("TL_SOURCE_ROOT"), src)
    venv = tmp_path / "venv"
    # --system-site-packages: Debian's numpy, cffi and meson-python
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    python = venv / "bin" / "python"
    env = dict(os.environ, HOME=str(tmp_path), PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)  # the build tree's package must not be seen
    r = subprocess.run([str(python), "-m", "pip", "install", "--no-index",
                        "--no-build-isolation", "--disable-pip-version-check", "."],
                       cwd=src, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check = (
        "import numpy as np, tinkerloss, sys\n"
        "assert tinkerloss.__file__.startswith(sys.prefix), tinkerloss.__file__\n"
        "x = np.array([[1.0, 2.0, 0.5]], np.float32)\n"
        "lp = tinkerloss.logprobs(x, np.array([1]))\n"
        "assert abs(lp[0] - (2.0 - np.log(np.exp(x).sum()))) < 1e-6\n"
        "print(tinkerloss.__version__, tinkerloss.__file__)\n")
    r = subprocess.run([str(python), "-c", check], cwd=tmp_path, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert str(venv) in r.stdout
    # the command comes along; the C library, headers and .pc do not
    r = subprocess.run([str(venv / "bin" / "tinkerloss"), "--version"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    installed = [p for p in venv.rglob("*") if p.name in ("libtinkerloss.a", "tinkerloss.pc",
                                                          "tinkerloss.h")]
    assert installed == []
    assert sys.version_info >= (3, 9)
