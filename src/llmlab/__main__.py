"""`python -m llmlab` runs the command line."""

from llmlab.cli.main import main

raise SystemExit(main())
