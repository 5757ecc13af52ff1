"""`python -m gpuclust.explore RUN`: a finished run's images on an interactive 2-D map, in the browser.

Without --export the page is written into RUN/explore/ and served from this machine (http://127.0.0.1:8765/ by
default; over ssh, forward the port) until Ctrl-C; the browser opens when the machine has one, else the URL is
printed. With --export DIR the same page is written as a static folder that opens with no server (DIR/index.html),
to share or host. --atlas DIR writes the rows for Embedding Atlas as well.

Exit codes: 0 success; 2 bad input (one line on stderr): a folder that is not a run (nor a sweep), a run whose map
cannot be made (no map.parquet and no stored embeddings), a port in use, bokeh missing; 1 internal error.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import logging
import sys
import threading
from pathlib import Path

from ..errors import OneLineParser, UserError, one_line

log = logging.getLogger("gpuclust")

DEFAULT_PORT = 8765
EXAMPLE = """example:
  python -m gpuclust.explore runs/fmnist
  python -m gpuclust.explore runs/fmnist --export fmnist-map      # open fmnist-map/index.html, no server
  python -m gpuclust.explore sweeps/study --port 0 --no-browser    # a sweep opens its best run"""


def get_args_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = OneLineParser(prog="python -m gpuclust.explore", name="gpuclust.explore",
                      description=__doc__.split("\n")[0], epilog=EXAMPLE,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="a run directory, a sweep directory (its best run), or a folder of "
                   "runs such as runs/ (its newest)")
    p.add_argument("--export", metavar="DIR", help="write the page as a static site into DIR and exit (no server)")
    p.add_argument("--atlas", metavar="DIR", help="also write the rows for Embedding Atlas into DIR")
    p.add_argument("--thumbnails", metavar="N", type=int, default=50_000,
                   help="rows given a thumbnail: a seeded sample of N holding every outlier and duplicate "
                        "(default 50,000; 0: none, points only)")
    p.add_argument("--neighbours", metavar="K", type=int, default=10,
                   help="nearest rows (cosine, encoder space) listed for a clicked point (default 10; 0: none)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", metavar="N", type=int, default=DEFAULT_PORT,
                   help=f"port to serve on (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--no-browser", action="store_true", help="print the URL instead of opening a browser")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def check_args(args) -> None:
    """Values argparse cannot check, refused before any work."""
    if args.thumbnails < 0:
        raise UserError(f"--thumbnails {args.thumbnails}: a count of rows, 0 or more")
    if args.neighbours < 0:
        raise UserError(f"--neighbours {args.neighbours}: a count of rows, 0 or more")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: a port number in 0-65535")
    for flag in ("export", "atlas"):
        folder = getattr(args, flag)
        if folder is not None:
            check_output(Path(folder).expanduser(), f"--{flag}")


def check_output(out: Path, flag: str) -> None:
    """An output folder must be new, empty, or one this command wrote before (it holds index.html/atlas.parquet)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: exists and is not a folder")
    ours = ("index.html", "atlas.parquet", "thumbs", "README.txt")  # an earlier (possibly failed) export's files
    if out.is_dir() and any(p.name not in ours for p in out.iterdir()):
        raise UserError(f"{flag} {out}: holds other files; choose a new or empty folder")


def open_server(site: Path, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """A server of the folder `site` (bound now, so a port in use is a UserError before anything is printed)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise UserError(f"--port {port}: in use on {host}; pass another --port (0 picks a free one)") from None
        raise UserError(f"--host {host} --port {port}: cannot serve there ({exc.strerror or exc})") from None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site without a log line per thumbnail."""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("explore: " + format, *args)


def open_browser(url: str) -> bool:
    """Open `url` in the machine's browser; False when it has none (a server, a container). A Linux machine
    without a display has none here: Python's webbrowser would fall back to a text browser in this terminal."""
    import os
    import webbrowser

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return bool(webbrowser.open(url))


def serve(server: http.server.ThreadingHTTPServer, site: Path, args) -> None:
    """Serve `site` with `server` (open_server's) until Ctrl-C (or until the process is stopped)."""
    host, port = server.server_address[:2]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"
    opened = not args.no_browser and open_browser(url)
    print(f"explorer: {url}  ({'opened in the browser; ' if opened else ''}Ctrl-C to stop; "
          f"the page is {site / 'index.html'})", flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    """Build the run's explorer and serve it (or export it) for `argv` (default sys.argv); 0, or 2 after a
    one-line UserError on stderr."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_args(args)
        from . import build, require_bokeh

        require_bokeh()  # before page.py, which imports bokeh
        from .page import write_site

        run = build.resolve_run(args.run)
        site = Path(args.export).expanduser() if args.export else run / "explore"
        server = None if args.export else open_server_early(args, site)  # a port in use fails before the work
        got = build.from_run(run, thumbnails=args.thumbnails, neighbours=args.neighbours, progress=not args.quiet)
        index = writing(site, lambda: write_site(site, got.data, got.thumb_files))
        if args.atlas:
            from .atlas import write_atlas

            folder = Path(args.atlas).expanduser()
            writing(folder, lambda: write_atlas(folder, got.data, got.thumb_files))
    except UserError as exc:
        print(f"gpuclust.explore: error: {one_line(exc)}", file=sys.stderr)
        return 2
    for note in got.notes:
        print(f"explore: {note}", file=sys.stderr)
    d = got.data
    print(f"explore: {len(d):,} rows, {int(d.thumbs.sum()):,} thumbnails -> {index}", flush=True)
    if server is not None:
        serve(server, site, args)
    return 0


def open_server_early(args, site: Path) -> http.server.ThreadingHTTPServer:
    """The server, bound before the (possibly long) build so that a port in use fails first."""
    server = open_server(site, args.host, args.port)
    try:
        site.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        server.server_close()
        raise UserError(f"{site}: cannot write the explorer there ({exc.strerror or exc}); use --export DIR") from None
    return server


def writing(folder: Path, write):
    """`write()`, with a folder that cannot be written turned into a one-line UserError."""
    try:
        return write()
    except OSError as exc:
        raise UserError(f"{folder}: cannot write there ({exc.strerror or exc})") from None


def cli() -> None:
    """Console-script entry point: `main()`'s return value as the exit status (raises SystemExit)."""
    raise SystemExit(main())
