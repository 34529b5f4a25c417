"""Analysis of IODINE runs: figures, latent traversals, TensorBoard scalars, profiling.

One job per module; import the module you need (nothing is re-exported here, so that
``lib.analysis.palette``, used by the TensorBoard summaries, does not pull in matplotlib):

* ``palette``: label colours and tensor pictures (colorize, masked components, upscaling),
* ``layout``: the matplotlib panel-grid engine and atomic PNG saving,
* ``scores``: per-image ARI and MSE shown on figures, percentage formatting,
* ``figures``: decomposition, refinement, traversal, generalisation, dataset, curves figures,
* ``loading``: a figure's model and checkpoint, dataset images, forward pass and heading,
* ``run_figures``: each figure of a run, its numbers and title computed (``tools/visualize.py``),
* ``traversal_inputs``: the traversal figure's slot, dimensions, offsets and their unit,
* ``traversal``: latent traversal of one slot and the choice of slot and dimensions,
* ``scalars``: reading scalars from TensorBoard event files,
* ``profiling``: phase timing, FLOP counting, memory and device helpers for the benchmark,
* ``kernel_profile``: the benchmark's GPU kernel profile (time shares, kernels per step, peak).
"""
