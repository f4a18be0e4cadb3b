"""``python -m studbook_trainer.evaluation --task task.json --out scorecard.json``."""

import sys

from studbook_trainer.evaluation.entrypoint import main

sys.exit(main())
