"""Resuming a run: everything a resumed run reads and checks beside the Trainer's own checkpoint files.

* :mod:`~lkd_hf.resume.state`: the checkpoint's step and student weights, and the distillation's run state (the loss
  modules trained with the student, the loss learner, the loss statistics not yet logged), saved and restored;
* :mod:`~lkd_hf.resume.checks`: which checkpoint a resume may use (every file verified first), and a failed save
  named with its folder;
* :mod:`~lkd_hf.resume.settings`: the settings that shape what a run learns (``lkd_run.json``), compared with a
  resumed run's.
"""
