import os
import sys

from bench.runtime.warm_worker import ENV_VAR, run_in_worker

# A local Snakemake run starts a warm worker that has imported torch already (bench.runtime.warm_worker).
code = run_in_worker(os.environ[ENV_VAR], sys.argv[1:]) if os.environ.get(ENV_VAR) else None
if code is None:
    from bench.cli import main

    code = main()
raise SystemExit(code)
