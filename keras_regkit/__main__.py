"""`python -m keras_regkit`: the `keras-regkit` command.

The package (and Keras with it) is imported before this runs, so Keras'
start-up lines come first and `--help` waits for it; `keras-regkit` and
`python -m keras_regkit_cli` parse before Keras loads.
"""

import sys

from keras_regkit_cli import main

sys.exit(main())
