"""The `sample` stage and the rendering it shares with the other stages.

`stage` renders a prompt list into an image folder (`snapdistill sample`); `render` holds what the
distillation stages, `eval`, `inspect` and the bench render with (`generate`, `resolve_settings`, ...);
`prompts` reads the prompt sources, `schedulers` builds samplers with an explicit timestep spacing, and
`inspect` measures what a model costs per image.
"""
