"""Training: ImageED, the ED-aware teacher, geometry students, the EDG head, tasks, training loops, reports."""
if not __name__.startswith("edg."):  # the pre-0.2 name `train`: alias it to edg.train, once, with a warning
    from edg._legacy import redirect
    redirect(__name__)
