"""``edg serve``: EDG as a Ray Serve application (``docs/serve.md``).

=====================  ==================================================================================
``serve.config``       ``ServeConfig``: every setting of the service (limits, batching, resources, DFT/render)
``serve.schemas``      request bodies -> molecules, and the one-line 4xx errors for bad input
``serve.jobs``         render jobs (DFT -> images -> teacher targets), their content id and the result cache
``serve.app``          the Serve deployments (ingress, batched predictor, render jobs) and the app builder
``serve.local``        ``edg serve``'s runtime: a private Ray runtime on 127.0.0.1 (or a cluster), Serve, stop
``serve/page.html``    the web page at ``GET /`` (inline JS and CSS, nothing fetched from elsewhere)
=====================  ==================================================================================

Like ``cluster/``, this package imports Ray (Serve); ``serve.config``, ``serve.schemas`` and ``serve.jobs`` do
not, so the job runner works where Ray is not installed.
"""
