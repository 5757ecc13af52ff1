"""One file per clusterer, each registering its record (both twins, k, seed, checks) on import.

Adding a clusterer is one file here, imported below (the order is the order of `--list clusterers`), plus its test.
"""
from . import kmeans  # noqa: F401  (isort: skip_file)
from . import faiss_kmeans  # noqa: F401
from . import hdbscan  # noqa: F401
from . import agglomerative  # noqa: F401
from . import affinity  # noqa: F401
from . import spectral  # noqa: F401
from . import dbscan  # noqa: F401
from . import gaussian_mixture  # noqa: F401
