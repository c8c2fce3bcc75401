"""Design guards: forge_data stays a leaf, and importing it starts nothing heavy."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "data_pipeline" / "forge_data"


def test_forge_data_never_imports_platform_or_models():
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("forge_platform", "forge_models", "forge_eval")), f"{path.name} imports {name}"


def test_import_has_no_ray_or_torch_side_effects():
    code = ("import sys; import forge_data; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(PACKAGE.parent)})
    assert out.stdout.strip() == "[]"


def last_error_line_without_ray(call: str) -> str:
    """Run `call` (forge_data imported) in a fresh interpreter where no Ray was started; its error."""
    out = subprocess.run([sys.executable, "-c", f"import ray, forge_data; {call}"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(PACKAGE.parent), "RAY_AUTH_MODE": "disabled"})
    assert out.returncode != 0
    return out.stderr.strip().splitlines()[-1]


def test_the_pipeline_never_starts_ray_itself(tmp_path):
    """Where and how Ray starts is the caller's policy: without a running Ray, one clear error."""
    line = last_error_line_without_ray(
        f"forge_data.run_pipeline(forge_data.DataPipelineConfig(inputs=['{tmp_path}'], output_dir='{tmp_path / 'o'}'))")
    assert line.startswith("RuntimeError: forge_data.tokenize_corpus needs a running Ray"), line


def test_tokenizer_training_never_starts_ray_itself(tmp_path):
    line = last_error_line_without_ray(
        f"forge_data.train_tokenizer(forge_data.TokenizerConfig(), ['{tmp_path}'], '{tmp_path / 'tok'}')")
    assert line.startswith("RuntimeError: forge_data.train_tokenizer samples the corpus with Ray"), line
