"""ONNX Runtime as the CPU twin's encoder runtime: the exported model's outputs equal torch's on real images (to
float rounding), it is exported once and checked once, a model that fails either runs on torch with a log line, and
the embedding store does not depend on the runtime."""
import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from gpuclust.backend import resolve_backend  # noqa: E402
from gpuclust.encode import build_encoder  # noqa: E402
from gpuclust.encode import runtime as rt  # noqa: E402
from gpuclust.encode.extract import prepare_forward  # noqa: E402
from gpuclust.errors import UserError  # noqa: E402


def _fashion_batch(enc, n=16):
    """Real images (Fashion-MNIST's first n) through the encoder's own transform."""
    from PIL import Image

    from gpuclust.data import load_dataset

    ds = load_dataset("fashion-mnist", limit=n)
    return torch.stack([enc.transform(Image.fromarray(ds.images[i]).convert("RGB")) for i in range(n)])


def _torch_features(enc, x):
    with torch.inference_mode():
        return enc.model(x).float()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenetv2"])
def test_onnx_runtime_gives_torchs_features_on_real_images(name, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    enc = build_encoder(name)
    x = _fashion_batch(enc)
    want = _torch_features(enc, x)
    fwd = prepare_forward(enc, resolve_backend("cpu"), 8, runtime="onnx", cache_dir=tmp_path)
    assert isinstance(fwd.model, rt.OrtEncoder)
    with torch.inference_mode():
        got = fwd(x)
    rel, cos = rt.compare(got, want)
    assert rel < 1e-4 and cos > 0.99999 and not fwd.model.failed
    checked = json.loads(next(tmp_path.glob("onnx/*/checked.json")).read_text())
    assert checked["max_rel_error"] < 1e-4 and "checked against torch" in caplog.text


def test_exported_once_and_checked_once(tmp_path, monkeypatch):
    enc = build_encoder("mobilenetv2")
    x = _fashion_batch(enc, 4)
    with torch.inference_mode():
        first = prepare_forward(enc, resolve_backend("cpu"), 8, runtime="onnx", cache_dir=tmp_path)(x)
    exports, torch_calls = [], []
    monkeypatch.setattr(rt, "export", lambda *a: exports.append(a))
    enc2 = build_encoder("mobilenetv2")
    fwd = prepare_forward(enc2, resolve_backend("cpu"), 8, runtime="onnx", cache_dir=tmp_path)
    real_torch = fwd.model.torch_model
    fwd.model.torch_model = lambda t: torch_calls.append(t) or real_torch(t)
    with torch.inference_mode():
        again = fwd(x)
    assert exports == [] and torch_calls == []  # the cached, checked model runs alone
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_a_model_that_does_not_export_or_match_runs_on_torch(tmp_path, monkeypatch, caplog):
    enc = build_encoder("mobilenetv2")
    x = _fashion_batch(enc, 4)
    want = _torch_features(enc, x)

    def no_export(*a):
        raise RuntimeError("Exporting the operator 'aten::made_up' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(rt, "export", no_export)
    fwd = prepare_forward(enc, resolve_backend("cpu"), 8, runtime="onnx", cache_dir=tmp_path)
    with torch.inference_mode():
        torch.testing.assert_close(fwd(x), want)
        torch.testing.assert_close(fwd(x), want)
    assert fwd.model.failed and "runs on torch: it does not export to ONNX" in caplog.text
    monkeypatch.undo()
    monkeypatch.setattr(rt, "compare", lambda out, ref: (0.5, 0.9))  # as if the exported graph computed otherwise
    fwd = prepare_forward(build_encoder("mobilenetv2"), resolve_backend("cpu"), 8, runtime="onnx",
                          cache_dir=tmp_path / "b")
    with torch.inference_mode():
        torch.testing.assert_close(fwd(x), want)
    assert fwd.model.failed and "outputs differ from torch's" in caplog.text
    assert not list((tmp_path / "b").glob("onnx/*/checked.json"))


def test_which_runtime_runs(monkeypatch):
    assert rt.resolve_runtime("auto", "cpu") == "onnx"
    assert rt.resolve_runtime("torch", "cpu") == "torch"
    assert rt.resolve_runtime("auto", "cuda") == "torch" and rt.resolve_runtime("onnx", "cuda") == "torch"
    assert rt.resolve_runtime("auto", "cpu", "bf16") == "torch"
    assert rt.resolve_runtime("auto", "cpu", compile=True) == "torch"
    monkeypatch.setattr(rt, "has_onnxruntime", lambda: False)
    assert rt.resolve_runtime("auto", "cpu") == "torch"
    with pytest.raises(UserError, match="pip install onnxruntime"):
        rt.resolve_runtime("onnx", "cpu")
    assert not isinstance(prepare_forward(build_encoder("pixels"), resolve_backend("cpu"), 8, runtime="onnx",
                                          cache_dir="/nonexistent").model, rt.OrtEncoder)  # pixels: nothing to run


def test_the_store_is_shared_between_runtimes(tmp_path):
    """The runtime is not part of the store key (its numbers equal torch's to float rounding): a run on ONNX
    Runtime reuses every row a torch run stored, and encodes the same rows alike."""
    from gpuclust.run import main

    base = ["--dataset", "fashion-mnist", "--limit", "64", "--reduce", "pca", "--dims", "5", "--k", "10",
            "--gallery", "0", "-q", "--batch-size", "32"]
    assert main([*base, "--runtime", "torch", "--cache-dir", str(tmp_path / "c"), "--output", str(tmp_path / "a")]) == 0
    assert main([*base, "--runtime", "onnx", "--cache-dir", str(tmp_path / "c"), "--output", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "timings.json").read_text())["rows_reused"] == 64
    assert main([*base, "--runtime", "onnx", "--cache-dir", str(tmp_path / "d"), "--output", str(tmp_path / "e")]) == 0
    store = {}
    for cache in ("c", "d"):
        shard = next((tmp_path / cache).glob("*/shard-*.npz"))
        store[cache] = np.load(shard)["emb"]
    np.testing.assert_allclose(store["d"], store["c"], rtol=1e-4, atol=1e-4)


def test_a_graph_that_breaks_on_another_batch_size_falls_back_to_torch(tmp_path, caplog):
    """Tracing turns a Python int of the batch size into a constant: ONNX Runtime then fails on another batch size.
    The run goes on with torch (never exit 1), and nothing marks the model as checked."""
    from gpuclust.encode.models import Encoder

    class BatchBaked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(8))

        def forward(self, x):
            return x.reshape(int(x.shape[0]), -1)[:, :8] * self.w

    enc = Encoder("toy", BatchBaked().eval(), None, 8, key={"encoder": "toy", "weights": "ones"})
    fwd = prepare_forward(enc, resolve_backend("cpu"), 64, runtime="onnx", cache_dir=tmp_path)
    for n in (20, 1, 5):
        x = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            torch.testing.assert_close(fwd(x), x.reshape(n, -1)[:, :8])
    assert fwd.model.failed and "runs on torch" in caplog.text
    assert not list(tmp_path.glob("onnx/*/checked.json"))


def test_a_batch_split_among_threads_gives_one_runs_features_in_order(tmp_path):
    """The pipeline's Runner splits a batch into row chunks that threads run at once on a one-thread session; the
    features must be those of one run over the whole batch, row for row, for any batch size."""
    enc = build_encoder("mobilenetv2")
    x = _fashion_batch(enc, 70)
    rt.export(enc.model.eval(), x[:2].clone(), tmp_path / "model.onnx")
    whole = rt.Runner(tmp_path / "model.onnx", threads=2, parallel="intra")
    split = rt.Runner(tmp_path / "model.onnx", threads=2)
    assert split.parallel == "rows" and whole.parallel == "intra"
    assert rt.Runner(tmp_path / "model.onnx", threads=1).parallel == "intra"  # one thread: nothing to split
    a = x.numpy()
    want = whole(a)
    for n in (1, 3, 33, 70):
        got = split(a[:n])
        assert got.shape == (n, want.shape[1])
        np.testing.assert_allclose(got, want[:n], rtol=1e-5, atol=1e-5)
    reversed_rows = split(np.ascontiguousarray(a[::-1]))
    np.testing.assert_allclose(reversed_rows, want[::-1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="parallel"):
        rt.Runner(tmp_path / "model.onnx", parallel="batch")
