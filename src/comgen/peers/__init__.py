"""Third-party reference detectors ("peers"), run through comgen's data readers and map evaluation.

Why a separate package: peers come from optional installs (``pip install -e '.[peers]'``), so nothing else in
comgen may import them; they only have to write maps in comgen's exchange format.
"""
