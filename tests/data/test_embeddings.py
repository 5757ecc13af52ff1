"""embeddings:PATH labels: which file they come from, and that there is exactly one per row."""
import json

import numpy as np
import pytest

from gpuclust.data.embeddings import embedding_source
from gpuclust.errors import UserError
from helpers import run_cli


@pytest.fixture
def emb(tmp_path):
    """200 rows of sklearn's digits (pixels as embeddings) in emb/blobs.npy, with their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = tmp_path / "emb"
    folder.mkdir()
    np.save(folder / "blobs.npy", d.data[:200].astype(np.float32))
    return folder, d.target[:200]


def test_more_labels_than_rows_is_an_error(emb):
    folder, y = emb
    np.save(folder / "blobs.labels.npy", np.concatenate([y, y[:100]]))  # 300 labels for 200 rows
    with pytest.raises(UserError, match=r"expected one label per row \(200\), got shape \(300,\)"):
        embedding_source(f"embeddings:{folder / 'blobs.npy'}")
    np.save(folder / "blobs.labels.npy", y[:150])
    with pytest.raises(UserError, match="one label per row"):
        embedding_source(f"embeddings:{folder / 'blobs.npy'}")


def test_limit_takes_the_labels_of_the_rows_it_keeps(emb):
    folder, y = emb
    np.save(folder / "blobs.labels.npy", y)
    src = embedding_source(f"embeddings:{folder / 'blobs.npy'}", limit=50)
    assert len(src) == 50 and np.array_equal(src.labels, y[:50])
    np.save(folder / "blobs.labels.npy", y[:50])  # labels must still match the file, not the limit
    with pytest.raises(UserError, match=r"one label per row \(200\)"):
        embedding_source(f"embeddings:{folder / 'blobs.npy'}", limit=50)


def test_one_file_takes_labels_npy_from_its_folder(emb):
    folder, y = emb
    np.save(folder / "labels.npy", y)
    assert np.array_equal(embedding_source(f"embeddings:{folder / 'blobs.npy'}").labels, y)
    np.save(folder / "blobs.labels.npy", 9 - y)  # NAME.labels.npy wins over the folder's labels.npy
    assert np.array_equal(embedding_source(f"embeddings:{folder / 'blobs.npy'}").labels, 9 - y)
    (folder / "blobs.labels.npy").unlink()
    np.save(folder / "labels.npy", y[:120])
    with pytest.raises(UserError, match=r"labels\.npy: expected one label per row \(200\), got shape \(120,\)"):
        embedding_source(f"embeddings:{folder / 'blobs.npy'}")


def test_cli_reads_labels_npy_beside_one_file_and_rejects_extra_labels(emb, tmp_path):
    folder, y = emb
    np.save(folder / "labels.npy", y)
    args = ("--dataset", f"embeddings:{folder / 'blobs.npy'}", "--reduce", "pca", "--dims", "10", "--device", "cpu",
            "--no-silhouette-umap", "-q")
    r = run_cli(*args, "--output", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_classes"] == 10 and m["ami"] > 0.5  # k came from the labels: the run did not need --k
    np.save(folder / "labels.npy", np.concatenate([y, y]))
    r = run_cli(*args, "--output", str(tmp_path / "run2"))
    assert r.returncode == 2 and "one label per row" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_folder_takes_per_shard_labels_and_never_reads_them_as_rows(emb):
    folder, y = emb
    X = np.load(folder / "blobs.npy")
    (folder / "blobs.npy").unlink()
    np.save(folder / "a.npy", X[:120])
    np.save(folder / "b.npy", X[120:])
    np.save(folder / "a.labels.npy", y[:120])
    np.save(folder / "b.labels.npy", y[120:])
    src = embedding_source(f"embeddings:{folder}")
    assert src.matrix.shape == (200, 64)  # the label files are not shards
    np.testing.assert_array_equal(src.labels, y)
    np.save(folder / "labels.npy", 9 - y)  # the folder's labels.npy wins
    np.testing.assert_array_equal(embedding_source(f"embeddings:{folder}").labels, 9 - y)
    (folder / "labels.npy").unlink()
    (folder / "b.labels.npy").unlink()
    with pytest.raises(UserError, match=r"b\.npy has none"):
        embedding_source(f"embeddings:{folder}")


def test_string_labels_become_ids_with_their_names_kept(emb):
    folder, y = emb
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    np.save(folder / "blobs.labels.npy", names[y])
    src = embedding_source(f"embeddings:{folder / 'blobs.npy'}")
    assert src.classes == sorted(set(names[y]))
    assert [src.classes[i] for i in src.labels] == list(names[y])
