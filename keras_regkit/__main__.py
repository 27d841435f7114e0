import sys

from keras_regkit.cli import main

sys.exit(main())
