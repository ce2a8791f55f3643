import sys

from vs_vllm.cli import main

sys.exit(main())
