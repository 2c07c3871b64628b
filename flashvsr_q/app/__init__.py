"""The Gradio GUI (``flashvsr-q app``): ``main`` lays out the tabs, ``ui``/``jobs`` run their calls, and ``calls``
turns widget values into tasks (the same use cases the CLI runs)."""
