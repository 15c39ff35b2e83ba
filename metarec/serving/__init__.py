"""The HTTP service around :class:`metarec.serve.Recommender`.

:mod:`.app` builds the FastAPI app (POST /recommend, GET /health, POST /reload); :mod:`.guard`
is the ASGI middleware that refuses oversize bodies (413) and sheds load beyond a bounded
queue (503 + Retry-After); :mod:`.fleet` lets every worker process of one server learn of a
reload; :mod:`.run` checks the bind address and token and starts uvicorn with N workers.
Nothing here is imported by ``metarec.serve``: the model side stays free of web packages.
"""
