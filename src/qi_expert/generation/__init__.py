"""A model that writes code: the base model (basemodel: prepare, precision, devices), loading
(models), decoding (decoding: one stop policy; transformers_backend, llamacpp), GGUF files (gguf),
the packed attention (attention) and reference losses (refloss).
May import: core, typescript, data."""
