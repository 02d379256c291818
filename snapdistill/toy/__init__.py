"""The toy world: procedural captioned images, a shipped SD-architecture toy teacher and a judge.

- `snapdistill.toy.world`: the data (`toy_pairs`, `toy_val_prompts`, `render`, `parse_caption`).
- `snapdistill.toy.judge`: the judge and its metrics (`judge_images`, `features`, `toy_fid`).
- `snapdistill.toy.paths`: the shipped weights (`toy_teacher_dir`, `load_judge`).
- `snapdistill.toy.vae`, `snapdistill.toy.teacher`: how the shipped models are trained.
"""
