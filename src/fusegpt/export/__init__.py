"""Writing the compressed model for llama.cpp: a GGUF input written back with its blocks cut and
renumbered (`gguf_out`), a GGUF made from a HF model (`gguf_hf`), and the rounding of what the
repair changed onto llama.cpp's quantised types (`gguf_rounding`). The HF safetensors output is
`io.py`'s."""
