"""The training harness: run folders, checkpoints, the epoch loop, distributed set-up, progress,
evaluation, and the teacher and student jobs. The library (training/ outside harness/) never imports it.
"""
