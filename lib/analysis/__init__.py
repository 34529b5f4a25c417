"""Analysis of IODINE runs: figures, latent traversals, TensorBoard scalars.

One job per module; import the module you need (nothing is re-exported here). Label colours
and tensor pictures, which the TensorBoard summaries share, are ``lib.utils.palette``.

* ``layout``: the matplotlib panel-grid engine and atomic PNG saving,
* ``scores``: per-image ARI and MSE shown on figures, percentage formatting,
* ``figures``: decomposition, refinement, traversal, generalisation, dataset, curves figures,
* ``loading``: a figure's model and checkpoint, dataset images, forward pass and heading,
* ``run_figures``: each figure of a run, its numbers and title computed (``tools/visualize.py``),
* ``traversal_inputs``: the traversal figure's slot, dimensions, offsets and their unit,
* ``traversal``: latent traversal of one slot and the choice of slot and dimensions,
* ``scalars``: reading scalars from TensorBoard event files.
"""
