"""The ``edg`` command line, the stage driver, the Ray actor pool, the pipeline, Ray Train."""
if not __name__.startswith("edg."):  # the pre-0.2 name `cluster`: alias it to edg.cluster, once, with a warning
    from edg._legacy import redirect
    redirect(__name__)
