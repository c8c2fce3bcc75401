"""Export a checkpoint's consolidated weights to a folder Hugging Face transformers loads.

    python -m jobs.export --checkpoint runs/demo/checkpoints/demo-extend-1024/step_00000030 \
        --out runs/demo/hf/demo-extend-1024 --tokenizer runs/demo/tokenizer/tokenizer.model

    # then, anywhere with transformers installed (CPU is enough):
    python -c "from transformers import AutoModelForCausalLM as A, AutoTokenizer as T; d = 'runs/demo/hf/demo-extend-1024'; \
        t = T.from_pretrained(d); print(t.decode(A.from_pretrained(d).generate(**t('ROMEO:', return_tensors='pt'))[0]))"

The same command on one node or a cluster's head node: export reads one folder and writes one, on
CPU, in the checkpoint's fp32 (`model.pt`). The model is exported to the transformers class that
computes exactly what it computes (NemotronH for our GELU hybrids, Mamba2, Mamba, Llama for the
Transformers; the table is in models/forge_models/README.md). A model no class reproduces
(hybrid-2b-anchor: a SwiGLU MLP in a hybrid) exits 2 with one line naming the preset and the
value; so does a folder that is not a Hybrid Forge checkpoint.
"""

import sys

from forge_platform.cli import job_main
from forge_platform.hf_export import ExportConfig, run_export

if __name__ == "__main__":
    sys.exit(job_main(ExportConfig, run_export, __doc__))
