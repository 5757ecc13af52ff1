"""Property: whatever a user types for the dataset spec, clusterer and its parameters, the CLI ends with exit 0, or
exit 2 and one line on stderr; never a traceback (an uncaught exception fails the test)."""
import contextlib
import io
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuclust.cluster import CLUSTERERS
from gpuclust.run import main

CACHE = tempfile.mkdtemp(prefix="gpuclust-prop-")

specs = st.one_of(
    st.sampled_from(["digits", "mnist5k", "digits:x", "fashion-mnist:val", "imagefolder:", "folder:/no/such",
                     "imagefolder:/etc/hostname", "csv:x.csv", ":", "torchvision:CIFAR10",
                     "torchvision:CIFAR10:/no/such", "torchvision:FashionMNIST:/tmp:valid", "torchvision::",
                     "webdataset:", "webdataset:/no/such-{0..3}.tar", "webdataset:/etc/hostname"]),
    st.text(max_size=16),
)
keys = st.sampled_from(["n_init", "min_samples", "min_cluster_size", "eps", "damping", "linkage", "metric",
                        "distance_threshold", "n_neighbors", "tol", "max_iter", "foo", "", "1x"])
values = st.one_of(st.sampled_from(["-1", "0", "0.5", "3", "1e9", "ward", "cosine", "nope", "null", "[1, 2]", "",
                                    "true", "nan"]), st.text(max_size=6))
params = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, values), st.text(max_size=10)), max_size=3)


def _run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _assert_exit_0_or_one_line(argv):
    try:
        code, err = _run(argv)
    except SystemExit as exc:  # argparse: a usage error exits 2 (its one line is checked in test_cli)
        assert exc.code == 2
        return
    assert code in (0, 2), err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("gpuclust: error: "), err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, method=st.sampled_from(sorted(CLUSTERERS)), cparams=params,
       k=st.sampled_from([None, "auto", "-2", "0", "3", "100000"]))
def test_cli_exits_0_or_2_with_one_line(spec, method, cparams, k):
    argv = ["--dataset", spec, "--limit", "60", "--encoder", "pixels", "--reduce", "pca", "--dims", "5",
            "--cluster", method, "--cache-dir", CACHE, "--output", tempfile.mkdtemp(prefix="gpuclust-run-"), "-q",
            "--no-silhouette-umap", "--k-range", "2:4"]
    if k is not None:
        argv += ["--k", k]
    for p in cparams:
        argv += ["--cluster-param", p]
    _assert_exit_0_or_one_line(argv)


# -- CSV file lists: whatever a list holds, the run ends with exit 0 (bad rows skipped and listed) or one line --------

_ROOT = None


def _image_root():
    """A folder of real images (digits) the generated lists point into, made once."""
    global _ROOT
    if _ROOT is None:
        from pathlib import Path

        from helpers import write_digit_images

        _ROOT = Path(tempfile.mkdtemp(prefix="gpuclust-csv-"))
        write_digit_images(_ROOT / "imgs", n_per_class=6, classes=(0, 1))
        (_ROOT / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    return _ROOT


cells = st.one_of(
    st.sampled_from(["imgs/class_0/000.png", "imgs/class_1/003.png", "imgs/class_0/005.png", "imgs/broken.png",
                     "imgs/missing.png", "../outside.png", "/etc/hostname", "imgs", "", "imgs/class_1/001.png"]),
    st.text(max_size=12),
)
labels = st.one_of(st.sampled_from(["0", "1", "cat", "", "-1", "1e3"]), st.text(max_size=5))
rows = st.lists(st.tuples(cells, labels), min_size=0, max_size=14)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows, header=st.sampled_from(["path,label", "label,path", "path", "", "file,y", "path,label,extra"]),
       junk=st.lists(st.text(max_size=20), max_size=2), with_root=st.booleans())
def test_csv_lists_exit_0_or_2_with_one_line(rows, header, junk, with_root):
    import csv
    import io as _io

    root = _image_root()
    buf = _io.StringIO()
    if header:
        buf.write(header + "\n")
    w = csv.writer(buf)
    for path, label in rows:
        w.writerow([path, label] if "label" in header or not header else [path])
    for line in junk:
        buf.write(line.replace("\r", "") + "\n")
    lst = tempfile.NamedTemporaryFile("w", suffix=".csv", dir=root, delete=False)
    lst.write(buf.getvalue())
    lst.close()
    argv = ["--dataset", f"csv:{lst.name}", "--encoder", "pixels", "--reduce", "pca", "--dims", "2", "--k", "2",
            "--cache-dir", CACHE, "--output", tempfile.mkdtemp(prefix="gpuclust-run-"), "-q", "--no-silhouette-umap",
            "--device", "cpu"]
    if with_root:
        argv += ["--data-root", str(root)]
    _assert_exit_0_or_one_line(argv)
