"""Models: which one a config names, its hub and GGUF sources, architecture, tokenizer, identity,
loading, and the hooked residual stream; imports store and below, never data, backends or jobs."""
