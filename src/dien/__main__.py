"""``python -m dien`` runs the command line (``torchrun -m dien`` needs this)."""

from dien.cli.main import main

raise SystemExit(main())
