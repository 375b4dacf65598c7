"""The demo's stages: one module per task, each running the task, scoring it against a classical
baseline side by side, writing its figures and adding its section to the report.

Every stage is ``run(...) -> dict`` (the stage's entry in ``results.json``).
"""
