"""`python -m gpuclust.explore`: see gpuclust/explore/cli.py."""
from .cli import main

raise SystemExit(main())
