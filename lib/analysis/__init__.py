"""Analysis of IODINE runs, what ``tools/visualize.py`` draws. Import the module you need:

* ``layout``: the panel grid and atomic PNG saving (label colours: ``lib.utils.palette``),
* ``loading``: a figure's model and checkpoint, dataset images, forward pass and heading,
* ``traversal``: latent traversal of one slot, the choice of slot, dimensions and offsets,
* ``figures``: every figure with its numbers and title, and TensorBoard scalars for curves.
"""
