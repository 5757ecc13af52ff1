"""The configuration schema, defined once in gpuclust/config.py: the CLI's flags, the YAML checks and their defaults
all come from it."""
import pytest

from gpuclust.config import RunConfig, check_choices, options
from gpuclust.errors import UserError
from gpuclust.run import config_from_args, get_args_parser, main
from helpers import run_cli

# The compatibility contract: every option string `python -m gpuclust.run` accepted before the schema existed.
FLAGS_BEFORE = {
    "--arch", "--batch-size", "--cache-dir", "--cluster", "--cluster-param", "--compile", "--config", "--data-root",
    "--dataset", "--decode", "--device", "--dims", "--download", "--encoder", "--fit-sample", "--gallery", "--gpus",
    "--help", "--k", "--k-range", "--limit", "--list", "--no-silhouette-umap", "--no-zscore", "--normalize",
    "--num-workers", "--output", "--precision", "--preprocess", "--quiet", "--reduce", "--reduce-param", "--runtime",
    "--scheduler-address", "--seed", "--shard-size", "--silhouette-metrics", "--silhouette-original",
    "--store-dtype", "--subsample", "--weights", "--workers", "--zscore", "-h", "-q",
}
OWN_FLAGS = {"--help", "-h", "--list", "--config", "--quiet", "-q"}  # the CLI's own, not settings

# The defaults every YAML file and stored run relies on.
DEFAULTS = {
    "data": {"spec": "fashion-mnist", "limit": None, "root": None, "subsample": "first", "download": False},
    "encode": {"spec": "efficientnet_lite0", "weights": None, "batch_size": 128, "num_workers": "auto",
               "cache_dir": None, "shard_size": 2048, "store_dtype": "float32", "precision": "fp32", "arch": None,
               "preprocess": "default", "decode": "cpu", "compile": False, "runtime": "auto"},
    "reduce": {"method": "umap", "dims": 50, "params": {}, "zscore": None, "normalize": "none", "fit_sample": None},
    "cluster": {"method": "kmeans", "k": None, "k_range": (2, 30), "params": {}},
    "evaluate": {"silhouette_umap": True, "silhouette_original": False, "silhouette_metrics": ("euclidean",)},
    "curate": {"duplicates": None, "outliers": None},
    "explore": {"map": "umap"},
    "device": "auto", "gpus": 1, "workers": None, "scheduler_address": None, "seed": 0, "output": None, "gallery": 8,
}

FIXED = [opt for opt in options() if isinstance(opt.choices, tuple)]


def _parser_flags() -> set[str]:
    return {s for a in get_args_parser()._actions for s in a.option_strings}


def test_every_field_is_declared_once_with_its_default():
    keys = [opt.key for opt in options()]
    flags = [opt.flag for opt in options() if opt.flag]
    assert len(keys) == len(set(keys)) and len(flags) == len(set(flags))
    assert RunConfig().to_dict() == DEFAULTS
    for opt in options():
        assert opt.value(RunConfig()) == opt.default and opt.help, opt.key
    assert {opt.key for opt in FIXED} == {"data.subsample", "encode.store_dtype", "encode.precision",
                                          "encode.preprocess", "encode.decode", "encode.runtime",
                                          "reduce.normalize", "explore.map", "device"}


def test_parser_flags_are_the_schemas():
    by_dest = {a.dest: a for a in get_args_parser()._actions if not set(a.option_strings) & OWN_FLAGS}
    assert set(by_dest) == {opt.key for opt in options() if opt.flag}
    for opt in options():
        if opt.flag:
            assert by_dest[opt.key].option_strings[0] == opt.flag
            assert list(by_dest[opt.key].choices or []) == list(opt.choice_names() or [])


def test_every_flag_of_before_is_still_accepted_and_in_help():
    assert FLAGS_BEFORE <= _parser_flags()
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in FLAGS_BEFORE | {opt.flag for opt in options() if opt.flag}:
        assert flag in proc.stdout, flag


def test_registry_choices_follow_the_registries():
    from gpuclust.cluster import CLUSTERERS
    from gpuclust.reduce import NORMALIZE, REDUCERS

    choices = {opt.key: opt.choice_names() for opt in options()}
    assert choices["cluster.method"] == tuple(CLUSTERERS)
    assert choices["reduce.method"] == tuple(REDUCERS)
    assert choices["reduce.normalize"] == tuple(NORMALIZE)


@pytest.mark.parametrize("opt", FIXED, ids=[opt.key for opt in FIXED])
def test_yaml_with_a_bad_choice_is_one_line_before_any_work(opt, tmp_path, capsys, monkeypatch):
    import gpuclust.pipeline

    monkeypatch.setattr(gpuclust.pipeline, "data_stage", lambda *a, **k: pytest.fail("the run started"))
    head, _, name = opt.key.rpartition(".")
    (tmp_path / "c.yaml").write_text(f"{head}: {{{name}: bogus}}\n" if head else f"{name}: bogus\n")
    assert main(["--config", str(tmp_path / "c.yaml"), "-q", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gpuclust: error: {opt.flag} 'bogus': {', '.join(opt.choices[:-1])} or {opt.choices[-1]} "
                   f"(YAML {opt.key})"]
    assert not (tmp_path / "run").exists()


def test_a_config_built_in_python_has_its_choices_checked_too():
    from dataclasses import replace

    from gpuclust.pipeline import check_values

    cfg = RunConfig()
    check_choices(cfg)
    with pytest.raises(UserError, match=r"^--precision 'fp8': fp32, bf16 or fp16 \(YAML encode.precision\)$"):
        check_values(replace(cfg, encode=replace(cfg.encode, precision="fp8")))


def test_flags_map_to_their_keys_and_lay_over_the_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("reduce: {params: {n_neighbors: 5}}\nencode: {precision: bf16, batch_size: 7}\n"
                                     "evaluate: {silhouette_metrics: [l1]}\nseed: 4\n")
    args = get_args_parser().parse_args([
        "--config", str(tmp_path / "c.yaml"), "--reduce-param", "min_dist=0.2", "--batch-size", "9",
        "--no-silhouette-umap", "--silhouette-metrics", "l1, cosine,,", "--k", "auto", "--k-range", "3:9",
        "--dims", "7.0", "--no-zscore", "--data-root", "/d"])
    cfg = config_from_args(args)
    assert cfg.reduce.params == {"n_neighbors": 5, "min_dist": 0.2}
    assert (cfg.encode.precision, cfg.encode.batch_size, cfg.seed) == ("bf16", 9, 4)  # left out: the YAML's value
    assert cfg.evaluate.silhouette_umap is False and cfg.evaluate.silhouette_metrics == ("l1", "cosine")
    assert (cfg.cluster.k, cfg.cluster.k_range, cfg.reduce.dims, cfg.reduce.zscore) == ("auto", (3, 9), 7, False)
    assert cfg.data.root == "/d" and isinstance(cfg.reduce.dims, int)


def test_num_workers_is_a_count_or_auto_in_yaml_and_flags(tmp_path):
    from gpuclust.checks import check_values

    parse = get_args_parser().parse_args
    for text, flags, want in [("num_workers: auto", [], "auto"), ("num_workers: 2", [], 2),
                              ("num_workers: 2", ["--num-workers", "auto"], "auto"),
                              ("num_workers: auto", ["--num-workers", "0"], 0)]:
        (tmp_path / "c.yaml").write_text(f"encode: {{{text}}}\n")
        cfg = config_from_args(parse(["--config", str(tmp_path / "c.yaml"), *flags]))
        check_values(cfg)
        assert cfg.encode.num_workers == want, (text, flags)


def test_defaults_named_in_help_texts_are_the_fields_defaults():
    """A help text that names its default ("(default 128)") must name the one the dataclass has."""
    import re

    for opt in options():
        m = re.search(r"\(default ([\w.-]+)[;)]", opt.help)
        if m and opt.default is not None:
            assert m.group(1) == str(opt.default), (opt.key, opt.help)
