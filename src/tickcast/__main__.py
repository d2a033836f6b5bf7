import sys

from tickcast.cli import main

sys.exit(main())
