"""Taking a model to a new hospital: check the site (`check`), adapt the model to its labelled images (`run`).

Sits above `infer` (it scores with `Predictor`) and `train`/`evaluate` (it fine-tunes and measures), below `serve` and
`commands`.
"""
