"""Model construction and loading: CLIP tokenizer, tiny SD-architecture pipelines, teacher resolution."""
