"""``python -m alice`` runs the CLI (the app launches jobs this way)."""

from alice.cli import main

raise SystemExit(main())
