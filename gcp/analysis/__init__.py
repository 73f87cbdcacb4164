"""Why second-order pooling helps, measured: analyses of trained models.

- `landscape`: loss and gradient change along the gradient at a layer's activation.
- `sharpness`: top Hessian eigenvalue (power iteration) and Hessian trace (Hutchinson).
- `robustness`: error under ImageNet-C-style corruptions (`gcp.data.corruptions`), CE and
  mCE against a baseline model.
- `diagnostics`: covariance spectrum of the pooled features, Newton-Schulz convergence,
  distance of iSQRT(N) from the exact square root.
- `compare`: training curves of several runs against epochs and wall-clock.
- `transfer`: a linear probe of a frozen network's representation on another task.
- `stats`: standard errors, 95% intervals and the verdict of a claim over seeds.
- `study`: the TPAMI 2023 claims measured over heads and seeds (`python -m gcp.study`).
- `runs` (a run's model, variables, data and a fixed batch set), `probe` (layers,
  activations, loss as a function of either), `plots` (figures), `report.analyze` (all of
  it into `WORKDIR/analysis/`: `python -m gcp.analysis WORKDIR`).

Submodules are imported explicitly (`from gcp.analysis import landscape`), so that
`python -m gcp.analysis` can configure the process before JAX loads.
"""
