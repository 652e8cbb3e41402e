"""qi-expert: teach local code LLMs the @qi TypeScript ecosystem, and measure it.

The package is the pipeline, one subpackage per part; imports run down this list, never up
(tests/test_layout.py checks it):

    core        params (Hydra), files, process set-up, MLflow tracking, the generation cache
    typescript  tree-sitter parsing, the @qi pattern rules, the compiler, the sandbox
    data        the extract, validate, format and index stages' logic; prompts
    generation  the base model, loading, decoding (transformers, llama.cpp), GGUF files
    train       Axolotl: config, plugin, launch
    evaluation  scoring, compliance, graded losses, the arms, verified answers
    export      GGUF conversion, quantisation cost, Ollama Modelfiles
    serve       qi-expert serve, client configs, the served-answer monitor
    cli         the qi-expert command

Importing it does nothing but define names: entry points call core.runtime.setup() first.
"""

__version__ = "0.1.0"
