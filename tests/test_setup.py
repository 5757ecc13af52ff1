"""setup.sh on a machine whose python3 cannot make a virtual environment (stock Debian/Ubuntu without
python3-venv): it asks apt for the venv package and, where that does not help, stops with one line, before pip."""
import os
import shutil
import stat
import subprocess
import sys

from helpers import ROOT


def _script(path, text):
    path.write_text("#!/usr/bin/env bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_setup_installs_the_venv_package_or_says_what_to_install(tmp_path):
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copy(ROOT / "setup.sh", work / "setup.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    # A python3 without ensurepip (as Debian's python3 is before python3-venv), otherwise the real one.
    _script(bin_dir / "python3", f'for a in "$@"; do [[ "$a" == *ensurepip* ]] && exit 1; done\n'
                                 f'exec {sys.executable} "$@"\n')
    # apt-get that records what it was asked and installs nothing.
    _script(bin_dir / "apt-get", f'echo "apt-get $*" >> {calls}\n')
    _script(bin_dir / "sudo", '"$@"\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": "python3"}
    r = subprocess.run(["bash", "setup.sh"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    ver = "%d.%d" % sys.version_info[:2]
    asked = calls.read_text() if calls.exists() else ""
    assert f"install -y -qq python{ver}-venv" in asked
    assert r.returncode != 0
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and f"install python{ver}-venv" in err[0]
    assert not (work / ".venv").exists()  # stopped before making a venv or calling pip
