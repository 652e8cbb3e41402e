"""The gguf stage's logic: merge, convert and quantize (convert), what quantisation costs on the
benchmark (quantcost), Ollama Modelfiles (modelfile).
May import: core, typescript, data, generation, evaluation."""
