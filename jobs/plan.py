"""Print the memory plan of a job spec: each stage's predicted peak per GPU, term by term.

    python -m jobs.plan --config jobs/specs/hybrid_8b_campaign.toml
    python -m jobs.plan --config jobs/specs/pretrain.toml --model.preset hybrid-2b-anchor \
        --parallel.use_gpu true --parallel.gpu_memory_gib 139.8 --stage.seq_len 131072

A campaign spec (with [[stages]]) plans every stage; a pretrain spec its one stage. The GPU's
memory is `parallel.gpu_memory_gib`, else this machine's GPU. Every job runs the same plan when it
starts and refuses a stage that does not fit. Exit 0: every stage fits; 1: one does not; 2: a bad spec.
"""

import sys

from forge_platform.cli import plan_main

if __name__ == "__main__":
    sys.exit(plan_main(__doc__))
