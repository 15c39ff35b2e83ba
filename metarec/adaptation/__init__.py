"""Test-time adaptation, once per kind: each module holds the PyTorch function and the ONNX
emitter of the same computation side by side, so that the two cannot drift apart.

- :mod:`~metarec.adaptation.spec`: :class:`Adaptation`, the typed description a learner gives
  of its adaptation (``learner.adaptation()``), read by export, serving metadata and reports;
- :mod:`~metarec.adaptation.graph`: the small ONNX graph builder the emitters write into;
- :mod:`~metarec.adaptation.mlp`: the decision MLP's forward (the one definition: scores and
  last hidden features) and the "none" kind (the unadapted model);
- :mod:`~metarec.adaptation.gradient`: gradient steps on the support set (``adapt``,
  ``adapt_batch``: the one inner loop) and its in-graph analytic backward;
- :mod:`~metarec.adaptation.ridge`: the closed-form ridge output layer (R2-D2) and its in-graph
  Newton-Schulz solve;
- :mod:`~metarec.adaptation.kinds`: kind -> (PyTorch reference, ONNX emitter).

This package file imports nothing, so that ``spec`` stays torch-free.
"""
