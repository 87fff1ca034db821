"""``comgen serve``: a trained detector behind HTTP, with requests that arrive together run as one batch.

Why a package of its own: serving needs FastAPI and uvicorn (extra ``serve``), which the rest of comgen never
imports; it sits on the pipeline's floor and only uses ``detect.predict.Detector``'s public API.
"""
